"""PromptTextEncoder: prompts, synonyms, template averaging and the staleness-proof cache."""
import open_clip
import pytest
import torch
import torch.nn.functional as F

from ovseg_d2.modeling.backbone import build_open_clip_model
from ovseg_d2.modeling.text import PromptTextEncoder, average_templates, resolve_templates, split_synonyms

TINY = "ovseg-tiny-vit8"


@pytest.fixture(scope="module")
def clip_model():
    torch.manual_seed(0)
    return build_open_clip_model(TINY, "", force_quick_gelu=True).eval()


def make_encoder(clip_model, templates=("a photo of a {}.", "art of the {}."), rule="first"):
    return PromptTextEncoder(
        encode_tokens=lambda t: clip_model.encode_text(t, normalize=False),
        tokenizer=open_clip.get_tokenizer(TINY),
        templates=templates,
        synonym_rule=rule,
        parameters=lambda: list(clip_model.parameters()),
    )


def test_split_synonyms():
    assert split_synonyms("cat, kitten; kitty") == ["cat", "kitten", "kitty"]
    assert split_synonyms(" tv monitor ") == ["tv monitor"]
    with pytest.raises(ValueError, match="empty"):
        split_synonyms(" , ")


def test_embeddings_equal_direct_encoding(clip_model):
    encoder = make_encoder(clip_model)
    tok = open_clip.get_tokenizer(TINY)
    with torch.no_grad():
        got = encoder(["red circle", "sky, clouds"], device=torch.device("cpu"))
        direct = clip_model.encode_text(tok(["a photo of a red circle.", "art of the red circle.", "a photo of a sky.", "art of the sky."]))
    assert got.shape == (2, 2, 64)
    torch.testing.assert_close(got.reshape(4, 64), direct, rtol=1e-5, atol=1e-5)


def test_synonym_mean(clip_model):
    encoder = make_encoder(clip_model, templates=("{}",), rule="mean")
    tok = open_clip.get_tokenizer(TINY)
    with torch.no_grad():
        got = encoder(["cat; kitten", "dog"], device=torch.device("cpu"))
        direct = clip_model.encode_text(tok(["cat", "kitten", "dog"]))
    torch.testing.assert_close(got[0, 0], (direct[0] + direct[1]) / 2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1, 0], direct[2], rtol=1e-5, atol=1e-5)


def test_average_templates_by_hand():
    emb = torch.tensor([[[3.0, 4.0], [0.0, 2.0]]])  # 1 class x 2 templates
    # normalised: (0.6, 0.8) and (0, 1) -> mean (0.3, 0.9) -> renormalised
    torch.testing.assert_close(average_templates(emb), F.normalize(torch.tensor([[0.3, 0.9]]), dim=-1))
    torch.testing.assert_close(average_templates(emb, normalize_first=False), F.normalize(torch.tensor([[1.5, 3.0]]), dim=-1))


def test_cache_skips_encoder_and_invalidates_on_weight_change(clip_model):
    encoder = make_encoder(clip_model)
    names = ["red circle", "blue square"]
    cpu = torch.device("cpu")
    with torch.no_grad():
        first = encoder(names, device=cpu)
        second = encoder(names, device=cpu)
        assert encoder.encoder_calls == 1 and torch.equal(second, first)
        encoder(["red circle"], device=cpu)  # a different vocabulary is a different entry
        assert encoder.encoder_calls == 2
        # An in-place update (what an optimizer step does) must invalidate the entry.
        clip_model.transformer.resblocks[0].mlp.c_fc.weight.add_(0.1)
        third = encoder(names, device=cpu)
        assert encoder.encoder_calls == 3
        assert not torch.allclose(third, first)
        clip_model.transformer.resblocks[0].mlp.c_fc.weight.sub_(0.1)


def test_training_recomputes_with_gradients(clip_model):
    encoder = make_encoder(clip_model)
    out = encoder(["red circle"], device=torch.device("cpu"))  # grad mode: no cache
    assert out.requires_grad and len(encoder.cache) == 0


def test_bad_vocabularies_and_templates(clip_model):
    encoder = make_encoder(clip_model)
    with pytest.raises(ValueError, match="empty"):
        encoder([], device=torch.device("cpu"))
    with pytest.raises(ValueError, match="more than once.*Cat"):
        encoder(["cat", "Cat"], device=torch.device("cpu"))
    with pytest.raises(ValueError, match="exactly one"):
        resolve_templates("photo", ["no placeholder"])
    with pytest.raises(ValueError, match="known sets"):
        resolve_templates("nope")
    assert resolve_templates("catseg") == ("A photo of a {} in the scene",)
