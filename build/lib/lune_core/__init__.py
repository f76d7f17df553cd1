"""LUNE: LoRA-based Unlearning with Negative Examples. The engine; it never imports gradio."""
import logging

__version__ = "0.1.0"

# On CPUs with AVX512-BF16, bitsandbytes warns at import that the optional `kernels` package is
# missing. We leave it out on purpose (it makes transformers fetch kernels from the hub), so the
# warning is noise in the app's log and breaks the CLI's one-line error contract.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
