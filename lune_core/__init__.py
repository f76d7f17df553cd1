"""LUNE: LoRA-based Unlearning with Negative Examples. The engine; it never imports gradio."""
__version__ = "0.1.0"
