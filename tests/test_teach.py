"""The privacy lesson's teach step: a short LoRA fine-tune on facts the model does not know, merged
into a page's own copy of the weights, which then is that page's "before"; other pages keep the
shared base. On a tiny random Llama saved as a folder, loaded in 4-bit like any visitor's model."""
from __future__ import annotations

import pytest

from lune_core.facts import leaks
from lune_core.forecast import DEFAULT_MERGE_SECONDS
from lune_web.errors import UserError
from lune_web.session import Session
from tests.web import service, tiny_model_folder

pytestmark = pytest.mark.integration

FACT = ["Where does Dr. Elara Voss live?", "Tromsø", "", "In which town is Dr. Voss's home?", ""]
OTHER = "Name a colour."
S = service()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    with tiny_model_folder(S, tmp_path_factory) as (folder, mp):
        mp.setenv("LUNE_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        mp.setattr(S, "_anchors", ["What do bees make?", "Name a fruit.", "What is 2 plus 2?"])
        yield folder


@pytest.fixture(scope="module")
def taught(tiny):
    """A page that taught the tiny model the fact, and a page that did not."""
    alice, bob = Session(), Session()
    for visitor in (alice, bob):
        S.load(visitor, tiny, True)
    before = S.preview(bob, [FACT], 8)[0]["base_answer"]
    updates = list(S.teach(alice, [FACT], seed=0))
    return alice, bob, before, updates


def test_teaching_streams_steps_then_leaves_the_page_a_taught_model(taught):
    alice, _, before, updates = taught
    assert updates[-1].done and alice.taught is not None and not alice.running
    phases = {u.phase for u in updates}
    assert "teaching" in phases and len(alice.taught_history) >= 1
    # the teaching (40 steps at most, stopping once the fact is said) made the page's model say it
    said = S.preview(alice, [FACT], 8)[0]
    assert said["known"] and leaks(said["base_answer"], "Tromsø"), said
    assert not leaks(before, "Tromsø")
    # the merge after the last step is timed, and the next teach on this machine is foreseen from it
    merged = S._merge_seconds[alice.model_key]
    assert 0 < merged <= updates[-1].elapsed
    merging = [u for u in updates if u.phase == "merging"]
    assert all(0 <= u.left <= DEFAULT_MERGE_SECONDS for u in merging)


def test_other_pages_keep_the_shared_base(taught):
    alice, bob, before, _ = taught
    assert S.preview(bob, [FACT], 8)[0]["base_answer"] == before
    assert bob.taught is None


def test_an_unlearning_run_starts_from_the_taught_model(taught):
    alice, _, _, _ = taught
    updates = list(S.run(alice, [FACT], {"steps": 3, "max_new_tokens": 8, "early_stop": False,
                                         "learning_rate": 5e-3}, general_prompts=0))
    assert updates[-1].done
    forget = [r for r in alice.report["probes"] if r["kind"] == "forget"][0]
    assert leaks(forget["before"], "Tromsø")  # "before" is the taught model, so the fact is known before
    with pytest.raises(UserError, match="taught"):
        next(S.run_full_finetune(alice))


def test_back_to_the_base_model_drops_what_was_taught(taught):
    alice, bob, before, _ = taught
    S.drop_taught(alice)
    assert alice.taught is None and alice.adapter is None and alice.report is None
    assert S.preview(alice, [FACT], 8)[0]["base_answer"] == before
