"""HTSAT and CNN14: known answers for the pieces (window attention, masks, fold), invariants, tiny configs.

Numerical parity with msclap's own modules is in test_msclap_parity.py.
"""

import math
import time

import pytest
import torch

from clapkit.models import CNN14, HTSAT, CNN14Config, HTSATConfig, build_audio_encoder
from clapkit.models.htsat import (
    SpecAugment,
    SwinBlock,
    WindowAttention,
    relative_position_index,
    shifted_window_mask,
    window_merge,
    window_partition,
)

TINY_HTSAT = dict(n_mels=16, spec_size=64, embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=4,
                  time_mask_width=8, freq_mask_width=2, num_classes=10)
TINY_CNN14 = dict(n_mels=16, channels=(8, 16, 32), embed_dim=24, num_classes=10)


def tiny_htsat(**over) -> HTSAT:
    return HTSAT(HTSATConfig(**{**TINY_HTSAT, **over}))


@pytest.fixture()
def one_thread():
    """Timed tests run single-threaded: on a busy shared machine, OpenMP threads waiting on each other can
    make a tiny model 100x slower, which says nothing about the model."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def set_identity_bn0(model):
    with torch.no_grad():
        model.bn0.running_mean.zero_(); model.bn0.running_var.fill_(1.0)
        model.bn0.weight.fill_(1.0); model.bn0.bias.zero_()


# ---------------------------------------------------------------------------------------------- HTSAT pieces


def test_relative_position_index_known_answer():
    # 2x2 window: tokens (0,0),(0,1),(1,0),(1,1); index = (dh+1)*3 + (dw+1) with d = query - key.
    expected = torch.tensor([[4, 3, 1, 0], [5, 4, 2, 1], [7, 6, 4, 3], [8, 7, 5, 4]])
    assert torch.equal(relative_position_index(2), expected)
    idx = relative_position_index(8)
    assert idx.shape == (64, 64) and idx.min() == 0 and idx.max() == 224 and torch.all(idx.diagonal() == 112)


def test_shifted_window_mask_regions():
    # 8x8 grid, window 4, shift 2: the top-left window is one region; the bottom-right one holds 4 regions of 4.
    mask = shifted_window_mask(8, 8, 4, 2)
    assert mask.shape == (4, 16, 16)
    assert torch.all(mask[0] == 0)
    assert set(mask.unique().tolist()) == {0.0, -100.0}
    assert (mask[3] == 0).sum(dim=1).tolist() == [4] * 16  # each token sees only its own region of 4
    assert (mask[1] == 0).sum(dim=1).tolist() == [8] * 16  # right column window: 2 regions of 8


def test_window_partition_round_trip():
    x = torch.randn(2, 8, 8, 3)
    w = window_partition(x, 4)
    assert w.shape == (2, 4, 16, 3)
    assert torch.equal(w[0, 1, 0], x[0, 0, 4])  # window 1 = top-right block, first token = row 0, col 4
    assert torch.equal(window_merge(w, 4, 8, 8), x)


def test_window_attention_equals_explicit_softmax():
    torch.manual_seed(0)
    attn = WindowAttention(dim=12, window_size=2, num_heads=3, qkv_bias=True, attn_drop=0.0, proj_drop=0.0).eval()
    with torch.no_grad():
        attn.relative_position_bias_table.normal_()
    x = torch.randn(2, 4, 4, 12)  # batch 2, 4 windows of 2x2 tokens
    mask = shifted_window_mask(4, 4, 2, 1)
    for m in (None, mask):
        # Swin's formula, written out: softmax(q k^T * d^-1/2 + bias[heads] + mask[window]) v.
        q, k, v = attn.qkv(x).view(2, 4, 4, 3, 3, 4).permute(3, 0, 1, 4, 2, 5)  # each B, nW, heads, N, d
        bias = attn.relative_position_bias_table[relative_position_index(2).view(-1)].view(4, 4, 3).permute(2, 0, 1)
        logits = q @ k.transpose(-1, -2) / 2.0 + bias + (0 if m is None else m[:, None])
        out = attn.proj((logits.softmax(-1) @ v).permute(0, 1, 3, 2, 4).reshape(2, 4, 4, 12))
        ours = attn(x, m)
        torch.testing.assert_close(ours, out, atol=1e-6, rtol=1e-5)
        # and the same gradients, the relative-position bias table's included (it enters SDPA as a mask)
        weights = torch.randn_like(out)
        params = [attn.relative_position_bias_table, attn.qkv.weight]
        expected = torch.autograd.grad((out * weights).sum(), params)
        for got, want in zip(torch.autograd.grad((ours * weights).sum(), params), expected):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_htsat_runs_under_bf16_autocast():
    torch.manual_seed(0)
    model = tiny_htsat().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        emb = model(torch.randn(2, 200, 16))
    emb.float().sum().backward()
    assert torch.isfinite(emb.float()).all() and model.layers[0].blocks[1].attn.relative_position_bias_table.grad is not None


def _block_output_change(block, res, token):
    torch.manual_seed(1)
    with torch.no_grad():  # weights of order 1, so that a change is far above rounding noise
        for p in block.attn.parameters():
            p.normal_(std=0.3)
    x = torch.randn(1, res * res, block.norm1.normalized_shape[0])
    y = x.clone()
    y[0, token[0] * res + token[1]] += 3.0 * torch.randn(x.shape[-1])  # not a constant: LayerNorm removes those
    with torch.no_grad():
        return (block(x) - block(y)).abs().amax(-1).view(res, res)


def test_shifted_window_block_never_mixes_regions():
    cfg = HTSATConfig(**TINY_HTSAT)
    block = SwinBlock(cfg, 16, (8, 8), 2, shift=2, drop_path=0.0).eval()
    assert block.window_size == 4 and block.attn_mask is not None
    # (0,0) rolls to (6,6), into the bottom-right window together with original (6,6), which lies in another
    # region of the image: it must not see the change.  (1,1) lands in the same region: it must.
    change = _block_output_change(block, 8, (0, 0))
    assert change[6, 6] == 0 and change[1, 1] > 1e-2 and change[4, 4] == 0
    block.attn_mask = None  # without the mask the regions would mix: the test can fail
    assert _block_output_change(block, 8, (0, 0))[6, 6] > 1e-2


def test_unshifted_block_is_local_to_windows():
    cfg = HTSATConfig(**TINY_HTSAT)
    block = SwinBlock(cfg, 16, (8, 8), 2, shift=0, drop_path=0.0).eval()
    change = _block_output_change(block, 8, (5, 1))
    touched = (change > 0).nonzero().tolist()
    assert touched and all(r >= 4 and c < 4 for r, c in touched)  # only the bottom-left window


def test_window_larger_than_grid_disables_shift():
    cfg = HTSATConfig(**TINY_HTSAT)
    block = SwinBlock(cfg, 16, (2, 2), 2, shift=2, drop_path=0.0)
    assert block.window_size == 2 and block.shift == 0 and block.attn_mask is None


# ---------------------------------------------------------------------------------------------- HTSAT model


def test_fold_known_answer():
    model = tiny_htsat().eval()
    set_identity_bn0(model)
    cfg = model.config  # ratio 4, 256 frames, 16 mel bins -> 64x64 image
    logmel = torch.randn(2, cfg.max_frames, cfg.n_mels)
    image = model.spectrogram_image(logmel)
    assert image.shape == (2, 1, 64, 64)
    scale = 1.0 / math.sqrt(1.0 + model.bn0.eps)
    chunk = cfg.max_frames // cfg.freq_ratio
    for r, f, t in [(0, 0, 0), (1, 3, 5), (3, 15, 63), (2, 7, 31)]:
        torch.testing.assert_close(image[1, 0, r * cfg.n_mels + f, t], logmel[1, r * chunk + t, f] * scale)


def test_time_stretch_keeps_endpoints_and_constants():
    model = tiny_htsat().eval()
    set_identity_bn0(model)
    logmel = torch.randn(1, 100, 16)
    image = model.spectrogram_image(logmel)[0, 0] * math.sqrt(1.0 + model.bn0.eps)
    # align_corners=True: frame 0 -> first column of chunk 0, last frame -> last column of the last chunk.
    torch.testing.assert_close(image[0:16, 0], logmel[0, 0])
    torch.testing.assert_close(image[48:64, 63], logmel[0, -1])
    flat = model.spectrogram_image(torch.full((1, 100, 16), -3.0))
    torch.testing.assert_close(flat, torch.full_like(flat, -3.0 / math.sqrt(1.0 + model.bn0.eps)))


def test_input_checks():
    model = tiny_htsat()
    with pytest.raises(ValueError, match="at most 256 frames"):
        model(torch.randn(1, 257, 16))
    with pytest.raises(ValueError, match=r"\(batch, frames, 16\)"):
        model(torch.randn(1, 100, 64))


def test_eval_is_deterministic_and_batch_independent():
    torch.manual_seed(0)
    model = tiny_htsat().eval()
    x = torch.randn(3, 200, 16)
    with torch.no_grad():
        full = model(x)
        alone = model(x[1:2])
        assert torch.equal(full, model(x))
    torch.testing.assert_close(full[1:2], alone, atol=1e-5, rtol=1e-5)


def test_spec_augment_is_train_only_and_bounded():
    aug = SpecAugment(time_width=5, time_stripes=2, freq_width=3, freq_stripes=2)
    x = torch.ones(8, 40, 16)
    assert torch.equal(aug.eval()(x), x)
    torch.manual_seed(0)
    out = aug.train()(x)
    zero_frames = (out == 0).all(dim=2).sum(dim=1)  # whole frames dropped, per example
    zero_bins = (out == 0).all(dim=1).sum(dim=1)
    assert zero_frames.max() <= 2 * 4 and zero_bins.max() <= 2 * 2
    assert zero_frames.sum() > 0 and zero_bins.sum() > 0
    kept = out[(out != 0)]
    assert torch.all(kept == 1)  # only zeroing, no rescaling
    torch.manual_seed(0)
    assert torch.equal(aug(x), out)  # reproducible from the seed


def test_tiny_htsat_trains_fast_and_every_used_weight_gets_a_gradient(one_thread):
    torch.manual_seed(0)
    model = tiny_htsat(drop_path_rate=0.1).train()
    x = torch.randn(2, 200, 16)
    times = []
    for _ in range(3):  # best of 3: the first call pays one-off kernel set-up, a shared machine adds noise
        model.zero_grad()
        start = time.perf_counter()
        emb = model(x)
        (emb.square().mean() + model.tag(x).mean()).backward()
        times.append(time.perf_counter() - start)
    assert emb.shape == (2, 32) and model.out_dim == 32
    assert min(times) < 1.0, f"tiny HTSAT forward+backward took {min(times):.2f} s"
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert no_grad == ["head.weight", "head.bias"]  # the unused AudioSet head only (kept for strict loading)


def test_htsat_tag_and_headless_config():
    model = tiny_htsat().eval()
    with torch.no_grad():
        p = model.tag(torch.randn(2, 256, 16))
    assert p.shape == (2, 10) and torch.all((p > 0) & (p < 1))
    headless = tiny_htsat(num_classes=0)
    assert not any(k.startswith(("tscam_conv", "head")) for k in headless.state_dict())
    with pytest.raises(RuntimeError, match="without a TSCAM head"):
        headless.tag(torch.randn(1, 256, 16))


def test_head_shapes_are_those_of_the_built_heads():
    """``head_shapes`` (what load_msclap verifies an official head against) = the shapes of the head the encoder
    builds, for any class count, without building it."""
    for model in (tiny_htsat(), tiny_htsat(num_classes=527), CNN14(CNN14Config(**TINY_CNN14))):
        sd = model.state_dict()
        head = {k: tuple(v.shape) for k, v in sd.items() if k.startswith(("tscam_conv.", "head.", "fc_audioset."))}
        assert model.config.head_shapes() == head and len(head) in (2, 4)
    assert tiny_htsat(num_classes=0).config.head_shapes(10) == tiny_htsat().config.head_shapes()
    # msclap 2023's head: the 8x8 final grid folds 4 time chunks, so the conv spans 2 frequency rows
    assert HTSATConfig(num_classes=0).head_shapes(527) == {"tscam_conv.weight": (527, 768, 2, 3),
                                                           "tscam_conv.bias": (527,), "head.weight": (527, 527),
                                                           "head.bias": (527,)}
    assert CNN14Config(num_classes=0).head_shapes(527) == {"fc_audioset.weight": (527, 2048),
                                                           "fc_audioset.bias": (527,)}
    assert HTSATConfig(num_classes=0).head_shapes() == {} and CNN14Config(num_classes=0).head_shapes() == {}
    # a geometry that cannot fold the final grid back into time chunks cannot carry the head
    no_fold = HTSATConfig(**{**TINY_HTSAT, "n_mels": 12, "spec_size": 64, "num_classes": 0})  # 8 rows, ratio 5
    with pytest.raises(ValueError, match="TSCAM head: final grid 8 not divisible by freq_ratio 5"):
        no_fold.head_shapes(527)


def test_htsat_default_is_msclap_2023_geometry():
    model = HTSAT()
    sd = model.state_dict()
    assert model.out_dim == 768 and model.config.max_frames == 1024
    assert sd["patch_embed.proj.weight"].shape == (96, 1, 4, 4)
    assert sd["layers.2.blocks.5.attn.relative_position_bias_table"].shape == (225, 16)
    assert sd["layers.2.downsample.reduction.weight"].shape == (768, 1536)
    assert sd["tscam_conv.weight"].shape == (527, 768, 2, 3) and sd["head.weight"].shape == (527, 527)
    # derived buffers are not state: the checkpoint loader verifies msclap's copies instead
    assert not any("attn_mask" in k or "relative_position_index" in k for k in sd)
    masks = [b.attn_mask.shape[0] if b.attn_mask is not None else 0 for s in model.layers for b in s.blocks]
    assert masks == [0, 64, 0, 16, 0, 4, 0, 4, 0, 4, 0, 0]
    assert sum(p.numel() for p in model.parameters()) == 30_241_687


@pytest.mark.parametrize("bad, message", [
    (dict(depths=(2, 2), num_heads=(4,)), "same length"),
    (dict(embed_dim=15), "width 15 not divisible by 2 heads"),
    (dict(window_size=3), "token grid 16 is not a multiple of window_size 3"),
    (dict(spec_size=60), "token grid 15 cannot be halved"),
    (dict(spec_size=8), "spec_size 8 must be >= n_mels"),
])
def test_htsat_config_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        HTSATConfig(**{**TINY_HTSAT, **bad})


# ---------------------------------------------------------------------------------------------- CNN14


def test_tiny_cnn14_trains_fast_and_dropout_is_train_only(one_thread):
    torch.manual_seed(0)
    model = CNN14(CNN14Config(**TINY_CNN14))
    x = torch.randn(2, 50, 16)
    times = []
    for _ in range(3):
        model.zero_grad()
        start = time.perf_counter()
        emb = model.train()(x)
        emb.sum().backward()
        times.append(time.perf_counter() - start)
    assert min(times) < 1.0, f"tiny CNN14 forward+backward took {min(times):.2f} s"
    assert emb.shape == (2, 24) and model.out_dim == 24
    assert all(p.grad is not None for n, p in model.named_parameters() if not n.startswith("fc_audioset"))
    model.eval()
    with torch.no_grad():
        a, b = model(x), model(x)
        assert torch.equal(a, b) and torch.all(a >= 0)  # ReLU embedding, no dropout in eval
        torch.testing.assert_close(model(x[:1]), a[:1], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(model.tag(x), torch.sigmoid(model.fc_audioset(a)))


def test_cnn14_pooling_known_answer():
    # One conv block with weights that pass the (ReLU'd) input through: embedding = fc1(max_t + mean_t of
    # the frequency-mean), which we can compute by hand.
    model = CNN14(CNN14Config(n_mels=4, channels=(1,), embed_dim=1, num_classes=0)).eval()
    set_identity_bn0(model)
    block = model.conv_block1
    with torch.no_grad():
        for conv in (block.conv1, block.conv2):
            conv.weight.zero_(); conv.weight[0, 0, 1, 1] = 1.0
        for bn in (block.bn1, block.bn2):
            bn.running_mean.zero_(); bn.running_var.fill_(1.0 - bn.eps); bn.weight.fill_(1.0); bn.bias.zero_()
        model.bn0.running_var.fill_(1.0 - model.bn0.eps)
        model.fc1.weight.fill_(1.0); model.fc1.bias.zero_()
    x = torch.tensor([[[1.0, 3.0, -2.0, 0.0], [4.0, 4.0, 4.0, 4.0], [-1.0, -1.0, -1.0, -1.0]]])
    per_frame = x.clamp(min=0).mean(dim=2)  # [1.0, 4.0, 0.0]
    expected = per_frame.max() + per_frame.mean()
    torch.testing.assert_close(model(x), expected.view(1, 1))


def test_cnn14_default_is_msclap_2022_geometry_and_input_checks():
    model = CNN14()
    sd = model.state_dict()
    assert model.out_dim == 2048
    assert sd["conv_block6.conv2.weight"].shape == (2048, 2048, 3, 3) and sd["fc_audioset.weight"].shape == (527, 2048)
    assert sum(p.numel() for p in model.parameters()) == 80_753_615
    with pytest.raises(ValueError, match="at least 32 frames"):
        model(torch.randn(1, 20, 64))
    with pytest.raises(ValueError, match="n_mels 16 < 32"):
        CNN14Config(n_mels=16)


# ---------------------------------------------------------------------------------------------- registry


def test_build_audio_encoder():
    enc = build_audio_encoder({"name": "htsat", **TINY_HTSAT, "depths": [2, 2], "num_heads": [2, 4]})
    assert isinstance(enc, HTSAT) and enc.config == HTSATConfig(**TINY_HTSAT)
    assert HTSATConfig.from_dict(enc.config.to_dict()) == enc.config  # JSON-able round trip
    assert isinstance(build_audio_encoder({"name": "cnn14", **TINY_CNN14}), CNN14)
    with pytest.raises(ValueError, match="unknown audio encoder 'resnet'"):
        build_audio_encoder({"name": "resnet"})
    with pytest.raises(ValueError, match=r"HTSAT config: unknown key\(s\) \['hidden'\]"):
        build_audio_encoder({"name": "htsat", "hidden": 3})
