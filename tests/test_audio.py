"""clapkit.audio: I/O, mixing, resampling, crop/pad and the log-mel frontend against a hand-computed mel."""

import numpy as np
import pytest
import soundfile as sf
import torch

from clapkit.audio import (
    AudioReadError,
    FrontendConfig,
    LogMelFrontend,
    fit_length,
    load_clip,
    mix_down,
    read_audio,
    resample,
)


# ---------------------------------------------------------------------------------------------------------------
# A mel spectrogram computed by hand: explicit DFT of Hann-windowed, reflect-padded frames and Slaney
# triangular filters written from their definition (no torch, no torchaudio).


def slaney_hz_to_mel(f):
    f = np.asarray(f, dtype=np.float64)
    lin = f / (200.0 / 3)
    log = 15.0 + np.log(np.maximum(f, 1e-12) / 1000.0) / (np.log(6.4) / 27.0)
    return np.where(f >= 1000.0, log, lin)


def slaney_mel_to_hz(m):
    m = np.asarray(m, dtype=np.float64)
    lin = m * (200.0 / 3)
    log = 1000.0 * np.exp((np.log(6.4) / 27.0) * (m - 15.0))
    return np.where(m >= 15.0, log, lin)


def hand_filterbank(sr, n_fft, n_mels, fmin, fmax):
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    edges = slaney_mel_to_hz(np.linspace(slaney_hz_to_mel(fmin), slaney_hz_to_mel(fmax), n_mels + 2))
    fb = np.zeros((len(freqs), n_mels))
    for m in range(n_mels):
        lo, c, hi = edges[m], edges[m + 1], edges[m + 2]
        up = (freqs - lo) / (c - lo)
        down = (hi - freqs) / (hi - c)
        fb[:, m] = np.maximum(0, np.minimum(up, down)) * 2.0 / (hi - lo)  # Slaney area normalisation
    return fb


def hand_log_mel(x, sr, n_fft, hop, n_mels, fmin, fmax):
    pad = n_fft // 2
    xp = np.pad(x.astype(np.float64), pad, mode="reflect")
    n_frames = 1 + len(x) // hop
    win = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)  # periodic Hann
    k = np.arange(n_fft // 2 + 1)[:, None]
    n = np.arange(n_fft)[None, :]
    dft = np.exp(-2j * np.pi * k * n / n_fft)
    frames = np.stack([xp[i * hop : i * hop + n_fft] * win for i in range(n_frames)])
    power = np.abs(frames @ dft.T) ** 2
    mel = power @ hand_filterbank(sr, n_fft, n_mels, fmin, fmax)
    return 10 * np.log10(np.maximum(mel, 1e-10))


def test_frontend_matches_hand_computed_mel_of_a_sine():
    cfg = FrontendConfig(sample_rate=16000, clip_seconds=0.5, n_fft=512, win_length=512, hop_length=160,
                         n_mels=40, f_min=50, f_max=8000)
    t = np.arange(cfg.clip_samples) / cfg.sample_rate
    x = 0.5 * np.sin(2 * np.pi * 1000.0 * t)
    ours = LogMelFrontend(cfg)(torch.tensor(x, dtype=torch.float32)[None])[0].numpy()
    ref = hand_log_mel(x, 16000, 512, 160, 40, 50, 8000)
    assert ours.shape == ref.shape == (cfg.num_frames(), 40)
    # compare where there is energy (the -100 dB floor of empty bands is numerically fragile in float32)
    strong = ref > ref.max() - 60
    np.testing.assert_allclose(ours[strong], ref[strong], atol=0.05)
    # known answer: the loudest band of every interior frame is the one whose centre is nearest 1 kHz
    edges = slaney_mel_to_hz(np.linspace(slaney_hz_to_mel(50), slaney_hz_to_mel(8000), 42))
    expected_band = int(np.argmin(np.abs(edges[1:-1] - 1000.0)))
    assert (ours[5:-5].argmax(axis=1) == expected_band).all()


def test_frontend_total_power_of_a_sine_is_parseval():
    # A bin-centred sine of amplitude A: the Hann-windowed DFT peak is A*sum(w)/2 = A*N/4 (N = n_fft), so the
    # power in the peak bin is (A*N/4)^2, plus (A*N/8)^2 in each neighbour.
    cfg = FrontendConfig(sample_rate=16000, clip_seconds=0.5, n_fft=512, win_length=512, hop_length=160,
                         n_mels=40, f_min=50, f_max=8000)
    fe = LogMelFrontend(cfg)
    k0, A, N = 32, 0.25, 512
    t = np.arange(cfg.clip_samples)
    x = torch.tensor(A * np.sin(2 * np.pi * k0 * t / N), dtype=torch.float32)
    power = fe.power_spectrogram(x[None])[0, 10].numpy()
    assert power[k0] == pytest.approx((A * N / 4) ** 2, rel=1e-3)
    assert power[k0 + 1] == pytest.approx((A * N / 8) ** 2, rel=1e-3)
    assert power[k0 + 3 :].max() < 1e-3 * power[k0]


def test_msclap_preset_filterbank_reproduces_the_32k_quirk():
    # msclap 2023 feeds 44.1 kHz audio to a filterbank designed for 32 kHz, 50-14000 Hz
    cfg = FrontendConfig(sample_rate=44100, clip_seconds=7.0, n_fft=1024, win_length=1024, hop_length=320,
                         n_mels=64, f_min=50, f_max=14000, filterbank_sample_rate=32000)
    fb = LogMelFrontend(cfg).mel_fb.numpy()
    np.testing.assert_allclose(fb, hand_filterbank(32000, 1024, 64, 50, 14000), atol=1e-6)
    assert cfg.num_frames() == 965  # msclap's (B,1,965,64) for 308,700 samples


def test_read_audio_roundtrip_and_formats(tmp_path):
    x = (0.3 * np.sin(np.linspace(0, 200, 8000))).astype(np.float32)
    for ext, subtype in [("wav", "PCM_16"), ("flac", "PCM_16"), ("ogg", "VORBIS"), ("wav", "FLOAT")]:
        p = tmp_path / f"a_{subtype}.{ext}"
        sf.write(p, np.stack([x, -x], axis=1), 8000, subtype=subtype)
        audio, sr = read_audio(p)
        assert sr == 8000 and audio.shape[0] == 2 and audio.dtype == np.float32
        tol = 1e-6 if subtype == "FLOAT" else (5e-4 if subtype == "PCM_16" else 0.05)
        n = min(audio.shape[1], len(x))
        assert np.abs(audio[0, :n] - x[:n]).max() < tol
        # averaging the two channels (+x and -x) cancels: msclap would have concatenated them instead
        assert np.abs(mix_down(audio)).max() < tol


@pytest.mark.parametrize("kind", ["missing", "empty", "text", "directory"])
def test_read_audio_errors_name_the_file(tmp_path, kind):
    p = tmp_path / "bad.wav"
    if kind == "empty":
        p.write_bytes(b"")
    elif kind == "text":
        p.write_text("this is not audio\n" * 10)
    elif kind == "directory":
        p.mkdir()
    with pytest.raises(AudioReadError) as err:
        read_audio(p)
    assert str(p) in str(err.value)


def test_resample_preserves_a_tone_and_length():
    sr_in, sr_out, f = 44100, 16000, 440.0
    t = np.arange(sr_in) / sr_in
    y = resample(np.sin(2 * np.pi * f * t).astype(np.float32), sr_in, sr_out)
    assert y.shape == (sr_out,)
    spec = np.abs(np.fft.rfft(y.numpy()))
    assert np.argmax(spec) == pytest.approx(f, abs=1)  # 1 Hz bins over 1 s
    ref = np.sin(2 * np.pi * f * np.arange(sr_out) / sr_out)
    assert np.abs(y.numpy()[500:-500] - ref[500:-500]).max() < 2e-3


def test_fit_length_repeat_pads_and_centre_crops():
    x = torch.arange(5.0)
    assert fit_length(x, 12).tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]
    assert fit_length(torch.arange(10.0), 4).tolist() == [3, 4, 5, 6]
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = fit_length(torch.arange(100.0), 10, crop="random", generator=g1)
    b = fit_length(torch.arange(100.0), 10, crop="random", generator=g2)
    assert torch.equal(a, b) and a.diff().eq(1).all()
    with pytest.raises(ValueError):
        fit_length(x, 3, crop="sideways")


def test_load_clip_is_deterministic_for_stereo_and_long_files(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((48000 * 12, 2)).astype(np.float32) * 0.1  # 12 s stereo at 48 kHz
    p = tmp_path / "long_stereo.wav"
    sf.write(p, x, 48000, subtype="FLOAT")
    cfg = FrontendConfig(sample_rate=16000, clip_seconds=4.0)
    a, b = load_clip(p, cfg), load_clip(p, cfg)
    assert a.shape == (64000,) and torch.equal(a, b)
    # it is the centre 4 s of the channel average
    mono = resample(x.mean(axis=1), 48000, 16000)
    start = (mono.shape[0] - 64000) // 2
    assert torch.allclose(a, mono[start : start + 64000])


def test_load_clip_rejects_non_finite_samples(tmp_path):
    x = np.zeros(1600, np.float32)
    x[100] = np.nan
    p = tmp_path / "nan.wav"
    sf.write(p, x, 16000, subtype="FLOAT")
    with pytest.raises(AudioReadError, match="NaN"):
        load_clip(p, FrontendConfig())
