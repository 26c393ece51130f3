"""encode_text_trimmed equals open_clip's encode_text (features and gradients) while running the
text transformer over the prompt tokens only."""
import open_clip
import torch

from ovseg_d2.modeling.backbone.clip_text_trim import encode_text_trimmed
from ovseg_d2.modeling.backbone.open_clip_loading import build_open_clip_model

PROMPTS = ["itap of a red circle.", "a photo of the small object number 123 in the scene with a very long and wordy description.",
           "cat", "a bad photo of a dotted square."]


def tiny_clip(seed=0):
    torch.manual_seed(seed)
    model = build_open_clip_model("ovseg-tiny-vit8", "", force_quick_gelu=True)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return model.eval()


def test_features_equal_the_full_encoding_and_fewer_tokens_run():
    model = tiny_clip()
    tokens = open_clip.get_tokenizer("ovseg-tiny-vit8")(PROMPTS)
    seen = []
    handle = model.transformer.register_forward_pre_hook(lambda module, args, kwargs: seen.append(args[0].shape[1]), with_kwargs=True)
    with torch.no_grad():
        trimmed = encode_text_trimmed(model, tokens)
        full = model.encode_text(tokens, normalize=False)
    handle.remove()
    ends = tokens.argmax(dim=-1)
    assert ends.tolist()[2] < 16 <= ends.tolist()[1]  # two buckets: 16 tokens and 32 (the whole context here)
    assert seen == [16, 32, tokens.shape[1]]  # one pass per bucket, then the full encoding
    torch.testing.assert_close(trimmed, full, rtol=1e-5, atol=1e-5)
    # a prompt's feature does not depend on what it is batched with (its own bucket length)
    with torch.no_grad():
        alone = encode_text_trimmed(model, tokens[2:3])
        pair = encode_text_trimmed(model, tokens[[3, 2]])
    torch.testing.assert_close(alone[0], trimmed[2], rtol=0, atol=2e-6)  # float rounding of batched products only
    torch.testing.assert_close(pair[1], trimmed[2], rtol=0, atol=2e-6)
    torch.testing.assert_close(pair[0], trimmed[3], rtol=0, atol=2e-6)


def test_gradients_equal_the_full_encoding():
    model = tiny_clip(1)
    tokens = open_clip.get_tokenizer("ovseg-tiny-vit8")(PROMPTS)
    weights = torch.randn(4, model.text_projection.shape[1], generator=torch.Generator().manual_seed(2))
    grads = []
    for encode in (lambda t: encode_text_trimmed(model, t), lambda t: model.encode_text(t, normalize=False)):
        model.zero_grad()
        (encode(tokens) * weights).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 10
    for name in grads[0]:  # to 1e-6 of each gradient's scale
        scale = float(grads[1][name].abs().max())
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=0, atol=1e-6 * max(scale, 1.0), msg=name)


def test_backbones_use_it_for_prompts_only(shapes_root):
    """Class-name prompts go through ``encode_prompts`` (trimmed); ``encode_text`` (captions) is
    open_clip's, unchanged."""
    from detectron2.modeling import build_model

    from .conftest import quickstart_cfg
    from .tiny_configs import TALK2DINO_TINY

    for opts in [(), TALK2DINO_TINY]:
        model = build_model(quickstart_cfg("configs/quickstart/baseline_maskclip_tiny.yaml", *opts))
        tower = model.text_tower if opts else model.backbone
        assert model.text_encoder.encode_tokens == tower.encode_prompts
        tokens = model.text_encoder.tokenizer(PROMPTS)
        with torch.no_grad():
            torch.testing.assert_close(tower.encode_text(tokens), tower.clip.encode_text(tokens, normalize=False), rtol=0, atol=0)
            torch.testing.assert_close(tower.encode_prompts(tokens), tower.clip.encode_text(tokens, normalize=False), rtol=1e-5, atol=1e-5)


def test_non_causal_or_full_length_falls_back():
    model = tiny_clip()
    tokens = open_clip.get_tokenizer("ovseg-tiny-vit8")(PROMPTS)
    full_length = open_clip.get_tokenizer("ovseg-tiny-vit8")(["word " * 60, "more words " * 40])  # truncated: end tokens in the last column
    assert full_length.argmax(dim=-1).tolist() == [full_length.shape[1] - 1] * 2
    with torch.no_grad():
        torch.testing.assert_close(encode_text_trimmed(model, full_length), model.encode_text(full_length, normalize=False), rtol=0, atol=0)
        model.text_pool_type = "last"
        torch.testing.assert_close(encode_text_trimmed(model, tokens), model.encode_text(tokens, normalize=False), rtol=0, atol=0)
