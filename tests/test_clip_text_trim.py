"""encode_text_trimmed equals open_clip's encode_text (features and gradients) while running the
text transformer over the prompt tokens only."""
import open_clip
import torch

from ovseg_d2.modeling.backbone.clip_text_trim import encode_text_trimmed
from ovseg_d2.modeling.backbone.open_clip_loading import build_open_clip_model

PROMPTS = ["itap of a red circle.", "a photo of the small object number 123 in the scene.", "cat", "a bad photo of a dotted square with stripes and dots."]


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
    longest = int(tokens.argmax(dim=-1).max()) + 1
    assert seen == [longest, tokens.shape[1]] and longest < 20  # the trimmed pass ran on the prompt tokens only
    torch.testing.assert_close(trimmed, full, rtol=1e-5, atol=1e-5)
    # one prompt alone gives its own feature (the trim length depends on the batch)
    with torch.no_grad():
        alone = encode_text_trimmed(model, tokens[2:3])
    torch.testing.assert_close(alone[0], full[2], rtol=1e-5, atol=1e-5)


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
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6, msg=name)


def test_non_causal_or_full_length_falls_back():
    model = tiny_clip()
    tokens = open_clip.get_tokenizer("ovseg-tiny-vit8")(PROMPTS)
    full_length = open_clip.get_tokenizer("ovseg-tiny-vit8")(PROMPTS[:1] + ["word " * 60])  # truncated: its end token is the last column
    assert int(full_length.argmax(dim=-1).max()) == full_length.shape[1] - 1
    with torch.no_grad():
        torch.testing.assert_close(encode_text_trimmed(model, full_length), model.encode_text(full_length, normalize=False), rtol=0, atol=0)
        model.text_pool_type = "last"
        torch.testing.assert_close(encode_text_trimmed(model, tokens), model.encode_text(tokens, normalize=False), rtol=0, atol=0)
