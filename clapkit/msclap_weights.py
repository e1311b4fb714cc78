"""Load Microsoft's official msclap checkpoints (``CLAP_weights_2023.pth`` / ``CLAP_weights_2022.pth``) into a
clapkit ``CLAPModel``, strictly: every tensor in the file is either loaded, verified or dropped for a stated
reason, and every model tensor is filled.  Anything else is a ``WeightsError`` naming the keys.

The file is ``{"model": state_dict}`` (DDP-unwrapped), read with ``torch.load(weights_only=True)``: a pickle that
would run code is refused.  Key groups and what happens to them (``{A}`` = ``audio_encoder.base.htsat.`` for 2023,
``audio_encoder.base.`` for 2022):

=========================================================  ==================================================
``logit_scale``                                             -> ``logit_scale``
``{A}spectrogram_extractor.stft.conv_{real,imag}.weight``   verified equal to the periodic-Hann DFT that the
                                                            frontend's ``torch.stft`` computes, then dropped
``{A}logmel_extractor.melW``                                -> ``audio.frontend.mel_fb`` (the checkpoint's
                                                            filterbank is authoritative; the report says which
                                                            design it matches)
``{A}...attn_mask``, ``{A}...attn.relative_position_index`` verified equal to the buffers HTSAT derives from its
                                                            config (they prove the geometry), then dropped
``{A}tscam_conv.*``, ``{A}head.*`` (2023),                  the AudioSet head (527 classes): verified present
``{A}fc_audioset.*`` (2022)                                 with the shapes the encoder config gives a 527-class
                                                            head, then dropped (a CLAP model has no head: its
                                                            loss never reaches it); listed in the report
``{A}*`` (the rest)                                         -> ``audio.encoder.*``; integer buffers stored as
                                                            float (``num_batches_tracked``) are cast back
``audio_encoder.projection.*``                              -> ``audio.projection.*``
``caption_encoder.base.h.N.attn.{bias,masked_bias}``        dropped: causal-mask constants an older transformers
                                                            saved with GPT-2 (verified to be those constants)
``caption_encoder.base.embeddings.position_ids``            dropped: BERT's 0..n-1 index buffer (verified)
``caption_encoder.base.pooler.*``                           dropped if the model has no pooler (msclap pools
                                                            ``[CLS]``'s hidden state and never uses it)
``caption_encoder.base.*``                                  -> ``text.encoder.transformer.*``
``caption_encoder.projection.*``                            -> ``text.projection.*``
=========================================================  ==================================================
"""

from __future__ import annotations

import math
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from .audio import FrontendConfig, mel_filterbank
from .errors import WeightsError

__all__ = [
    "AUDIOSET_HEAD_DROPPED",
    "MSCLAP_AUDIOSET_CLASSES",
    "LoadReport",
    "load_msclap",
    "map_msclap_state_dict",
]

VERSIONS = ("2023", "2022")
# The clapcap (captioning) file holds the 2023 audio tower under ``clap.``; clapkit.clapcap_weights maps the rest.
AUDIO_PREFIX = {"2023": "audio_encoder.base.htsat.", "2022": "audio_encoder.base.", "clapcap": "clap.base.htsat."}
PROJECTION_PREFIX = {"2023": "audio_encoder.projection.", "2022": "audio_encoder.projection.",
                     "clapcap": "clap.projection."}
STFT_KEYS = ("spectrogram_extractor.stft.conv_real.weight", "spectrogram_extractor.stft.conv_imag.weight")
DERIVED_BUFFER = re.compile(r".*\.(attn_mask|attn\.relative_position_index)")
LEGACY_GPT2_BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")
TEXT_MODEL_ATTR = "text.encoder.transformer."  # where clapkit's text encoders keep the Hugging Face model
MAX_LISTED = 20  # keys listed per problem kind in an error message
NAMED_IN_SUMMARY = 4  # LoadReport.summary names the keys of a dropped group this small
# Both official files carry the AudioSet head their YAML configs ask for (num_classes: 527).
MSCLAP_AUDIOSET_CLASSES = 527
AUDIOSET_HEAD_DROPPED = (f"AudioSet head ({MSCLAP_AUDIOSET_CLASSES} classes, shapes verified): a CLAP model has none, "
                         "its contrastive loss never reaches it")  # the LoadReport.dropped reason of its keys


@dataclass
class LoadReport:
    """What ``load_msclap`` did with each checkpoint tensor."""

    path: str
    version: str
    loaded: int = 0  # tensors copied into the model
    dropped: dict[str, list[str]] = field(default_factory=dict)  # reason -> checkpoint keys
    cast: list[str] = field(default_factory=list)  # integer buffers stored as float, cast back
    verified: list[str] = field(default_factory=list)  # facts checked on the checkpoint
    mel_fb_design: str | None = None  # which filterbank design the checkpoint's melW equals, if any known one
    mel_fb_matches_config: bool = False  # equals mel_filterbank(model's FrontendConfig)
    mel_fb_max_abs_diff: float = math.nan  # against mel_filterbank(model's FrontendConfig)
    logit_scale: float = math.nan

    @property
    def dropped_audioset_head(self) -> list[str]:
        """The checkpoint keys of the AudioSet head, verified and dropped (empty if the file had none to drop)."""
        return list(self.dropped.get(AUDIOSET_HEAD_DROPPED, []))

    def summary(self) -> str:
        lines = [f"{self.path} (msclap {self.version}): {self.loaded} tensors loaded"]
        for reason, keys in self.dropped.items():
            named = f": {', '.join(keys)}" if len(keys) <= NAMED_IN_SUMMARY else ""
            lines.append(f"dropped {len(keys)} ({reason}){named}")
        if self.cast:
            lines.append(f"cast {len(self.cast)} float-stored integer buffers to int64")
        lines += [f"verified: {v}" for v in self.verified]
        design = self.mel_fb_design or "no known design"
        lines.append(f"mel filterbank: {design}; equals the model config's: {self.mel_fb_matches_config} "
                     f"(max abs diff {self.mel_fb_max_abs_diff:.3g})")
        if not math.isnan(self.logit_scale):  # a clapcap file has none
            lines.append(f"logit_scale {self.logit_scale:.4f} (exp = {math.exp(self.logit_scale):.2f})")
        return "\n".join(lines)


def _listing(kind: str, items: list[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    more = f" ... and {len(items) - MAX_LISTED} more" if len(items) > MAX_LISTED else ""
    return f"{kind} ({len(items)}): {shown}{more}"


def key_problems(mapped: dict[str, torch.Tensor], origin: dict[str, str], target: dict[str, torch.Tensor],
                 required: list[str], unmapped: list[str]) -> list[str]:
    """What keeps ``mapped`` (model key -> tensor; ``origin``: model key -> checkpoint key) from loading into a model
    whose state dict is ``target``: the ``required`` model keys it lacks, the keys with no place in the model (plus
    ``unmapped`` checkpoint keys), the shape mismatches; one listing per kind, empty when it fits."""
    missing = sorted(k for k in required if k not in mapped)
    unexpected = sorted(origin[k] for k in mapped if k not in target) + unmapped
    shapes = sorted(f"{origin[k]}: checkpoint {tuple(t.shape)} vs model {k} {tuple(target[k].shape)}"
                    for k, t in mapped.items() if k in target and t.shape != target[k].shape)
    return ([_listing("missing (model keys not in the checkpoint)", missing)] if missing else []) + \
        ([_listing("unexpected (checkpoint keys with no place in the model)", unexpected)] if unexpected else []) + \
        ([_listing("shape mismatch", shapes)] if shapes else [])


def read_msclap_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The flat state dict inside an official msclap file, read without executing any pickled code."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(path, "file does not exist" if not path.exists() else "not a regular file")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's safe unpickler says "Unsupported global: GLOBAL module.name ..." for a reference to code.
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(err))
        if found:
            raise WeightsError(
                path, f"refusing to unpickle: the file references Python code ({found.group(1)}), which would run "
                "on loading; msclap checkpoints hold only tensors and plain containers"
            ) from err
        detail = re.search(r"WeightsUnpickler error: *\s*(.+)", str(err))
        raise WeightsError(path, "not a readable PyTorch checkpoint "
                                    f"({detail.group(1).strip() if detail else str(err).splitlines()[0]})") from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise WeightsError(path, f"not a readable PyTorch checkpoint ({err})") from err
    if _is_flat_state_dict(obj):  # a bare state dict, as torch.save(model.state_dict()) writes it
        return obj
    if not isinstance(obj, dict) or "model" not in obj:
        found = sorted(map(str, obj))[:10] if isinstance(obj, dict) else type(obj).__name__
        raise WeightsError(path, f"not an msclap checkpoint: expected a dict with a 'model' state dict, found {found}")
    sd = obj["model"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsError(path, "not an msclap checkpoint: 'model' is not a flat dict of tensors")
    return sd


def _is_flat_state_dict(obj) -> bool:
    return (isinstance(obj, dict) and bool(obj) and "model" not in obj
            and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()))


def hann_dft_kernels(n_fft: int, win_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(n_fft//2+1, 1, n_fft) float64 real and imaginary DFT rows times a centred periodic Hann window:
    what torchlibrosa's conv-STFT uses and what ``torch.stft(window=hann_window(periodic=True))`` computes."""
    window = torch.zeros(n_fft, dtype=torch.float64)
    start = (n_fft - win_length) // 2
    window[start:start + win_length] = torch.hann_window(win_length, periodic=True, dtype=torch.float64)
    k = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[:, None]
    n = torch.arange(n_fft, dtype=torch.float64)[None, :]
    phase = 2 * math.pi * ((k * n) % n_fft) / n_fft  # reduce k*n mod n_fft first: exact phases
    return (torch.cos(phase) * window)[:, None], (-torch.sin(phase) * window)[:, None]


def known_filterbank_designs(cfg: FrontendConfig, version: str) -> dict[str, torch.Tensor]:
    """Candidate filterbanks a msclap checkpoint may hold, by description (see msclap-2023 notes §1.2)."""
    designs = {"as configured": dict()}
    if version in ("2023", "clapcap"):
        designs.update({
            "HTS-AT config.py design: sr 32000, 50-14000 Hz (msclap's HTSAT)": dict(filterbank_sample_rate=32000, f_min=50.0, f_max=14000.0),
            "YAML/paper design: sr 44100, 50-8000 Hz": dict(filterbank_sample_rate=44100, f_min=50.0, f_max=8000.0),
        })
    else:
        designs["YAML design: sr 44100, 50-14000 Hz (msclap's CNN14)"] = dict(filterbank_sample_rate=44100, f_min=50.0, f_max=14000.0)
    base = cfg.to_dict()
    return {name: mel_filterbank(FrontendConfig.from_dict({**base, **over})) for name, over in designs.items()}


def _close(a: torch.Tensor, b: torch.Tensor, atol: float) -> bool:
    return a.shape == b.shape and bool(torch.allclose(a.double(), b.double(), rtol=1e-4, atol=atol))


def map_msclap_state_dict(sd: dict[str, torch.Tensor], version: str, model: torch.nn.Module,
                          path: str | Path = "<state dict>") -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Rename, verify and drop msclap keys for ``model`` (a clapkit CLAPModel); raise on any mismatch.

    ``version`` "clapcap": ``sd`` holds only the file's ``clap.*`` audio tower and ``model`` only an ``.audio``
    tower (``clapkit.clapcap_weights`` maps the mapper and GPT-2 around this call).
    """
    if version not in VERSIONS + ("clapcap",):
        raise ValueError(f"msclap version must be one of {VERSIONS}, got {version!r}")
    report = LoadReport(path=str(path), version=version)
    if version in VERSIONS:
        _check_flavour(sd, version, path)
    target = model.state_dict()
    buffers = dict(model.named_buffers())
    frontend_cfg: FrontendConfig = model.audio.frontend.cfg
    audio_prefix, projection_prefix = AUDIO_PREFIX[version], PROJECTION_PREFIX[version]
    head_shapes, head_problem = _audioset_head_shapes(model.audio.encoder)

    mapped: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}  # clapkit key -> checkpoint key, for messages
    unmapped: list[str] = []
    problems: list[str] = []

    def drop(reason: str, key: str) -> None:
        report.dropped.setdefault(reason, []).append(key)

    def put(new: str, key: str) -> None:
        mapped[new], origin[new] = sd[key], key

    stft: dict[str, torch.Tensor] = {}
    head: dict[str, torch.Tensor] = {}
    derived_ok = 0
    for key, tensor in sd.items():
        if key == "logit_scale":
            put("logit_scale", key)
        elif key.startswith(audio_prefix):
            rest = key[len(audio_prefix):]
            if rest in STFT_KEYS:
                stft[rest] = tensor
            elif rest == "logmel_extractor.melW":
                put("audio.frontend.mel_fb", key)
            elif rest in head_shapes:
                head[rest] = tensor
            elif DERIVED_BUFFER.fullmatch(rest):
                ours = buffers.get(f"audio.encoder.{rest}")
                if ours is None:
                    problems.append(f"unexpected derived buffer {key}: the model has no such attention layer")
                elif ours.shape != tensor.shape or not torch.equal(ours.to(tensor.dtype), tensor):
                    problems.append(f"{key} differs from the buffer this HTSAT config derives "
                                    f"(checkpoint {tuple(tensor.shape)} vs model {tuple(ours.shape)}): other window/grid geometry")
                else:
                    derived_ok += 1
                    drop("derived HTSAT buffers, verified equal to the config's", key)
            else:
                put(f"audio.encoder.{rest}", key)
        elif key.startswith(projection_prefix):
            put("audio.projection." + key[len(projection_prefix):], key)
        elif key.startswith("caption_encoder.base."):
            rest = key[len("caption_encoder.base."):]
            new = TEXT_MODEL_ATTR + rest
            if new in target:
                put(new, key)
            elif version == "2023" and LEGACY_GPT2_BUFFER.fullmatch(rest) and _is_gpt2_mask_constant(rest, tensor):
                drop("legacy GPT-2 causal-mask buffers (older transformers saved them)", key)
            elif version == "2022" and rest == "embeddings.position_ids" and _is_arange(tensor):
                drop("BERT position_ids buffer (0..n-1)", key)
            elif version == "2022" and rest.startswith("pooler."):
                drop("BERT pooler (msclap pools [CLS]'s hidden state; the model has no pooler)", key)
            else:
                put(new, key)  # reported as unexpected below
        elif key.startswith("caption_encoder.projection."):
            put("text.projection." + key[len("caption_encoder.projection."):], key)
        else:
            unmapped.append(key)

    # STFT: clapkit's frontend computes the same transform with torch.stft; the kernels must be exactly that.
    missing_stft = [audio_prefix + k for k in STFT_KEYS if k not in stft]
    if missing_stft:
        problems.append(_listing("missing STFT kernels", missing_stft))
    else:
        expected = hann_dft_kernels(frontend_cfg.n_fft, frontend_cfg.win_length)
        stft_ok = True
        for k, want in zip(STFT_KEYS, expected):
            got = stft[k]
            if got.shape != want.shape:
                problems.append(f"{audio_prefix}{k}: shape {tuple(got.shape)}, the frontend (n_fft "
                                f"{frontend_cfg.n_fft}) computes {tuple(want.shape)}")
                stft_ok = False
            elif not _close(got, want, atol=1e-5):
                diff = (got.double() - want).abs().max().item()
                problems.append(f"{audio_prefix}{k} is not the periodic-Hann DFT the frontend computes "
                                f"(max abs diff {diff:.3g}); these weights need a different STFT")
                stft_ok = False
        if stft_ok:
            for k in STFT_KEYS:
                drop("STFT conv kernels, verified equal to the periodic-Hann DFT", audio_prefix + k)
            report.verified.append(f"STFT kernels = periodic Hann ({frontend_cfg.win_length}) x DFT ({frontend_cfg.n_fft})")
    if derived_ok:
        report.verified.append(f"{derived_ok} HTSAT attention masks / relative-position indices equal the config's")

    # The AudioSet head: every tensor present with a 527-class head's shape for this encoder config, then dropped.
    if head_problem:
        problems.append(head_problem)
    else:
        head_missing = [audio_prefix + k for k in head_shapes if k not in head]
        head_shape = [f"{audio_prefix}{k}: checkpoint {tuple(head[k].shape)}, a {MSCLAP_AUDIOSET_CLASSES}-class head "
                      f"on this encoder has {shape}" for k, shape in head_shapes.items()
                      if k in head and tuple(head[k].shape) != shape]
        if head_missing:
            problems.append(_listing(f"missing AudioSet head tensors (msclap files carry a "
                                     f"{MSCLAP_AUDIOSET_CLASSES}-class head)", head_missing))
        if head_shape:
            problems.append(_listing("AudioSet head shape mismatch", head_shape))
        if not head_missing and not head_shape:
            for k in head_shapes:
                drop(AUDIOSET_HEAD_DROPPED, audio_prefix + k)
            report.verified.append(f"AudioSet head: {len(head_shapes)} tensors with the shapes of a "
                                   f"{MSCLAP_AUDIOSET_CLASSES}-class head on this encoder")

    # Integer buffers (BatchNorm's num_batches_tracked) stored as float: cast back if they hold integers.
    for new, tensor in list(mapped.items()):
        want = target.get(new)
        if want is not None and not want.is_floating_point() and tensor.is_floating_point():
            if not torch.equal(tensor, tensor.round()):
                problems.append(f"{origin[new]}: integer buffer holds non-integer values")
                continue
            mapped[new] = tensor.to(want.dtype)
            report.cast.append(origin[new])

    problems += key_problems(mapped, origin, target, list(target), unmapped)
    if problems:
        raise WeightsError(path, f"does not match the msclap {version} architecture", problems)
    report.loaded = len(mapped)
    return mapped, report


def _audioset_head_shapes(encoder: torch.nn.Module) -> tuple[dict[str, tuple[int, ...]], str | None]:
    """(encoder-relative key -> shape of msclap's AudioSet head on this encoder, problem or None)."""
    cfg = getattr(encoder, "config", None)
    if not hasattr(cfg, "head_shapes"):
        return {}, f"the audio encoder ({type(encoder).__name__}) cannot describe an AudioSet head to verify"
    try:
        return cfg.head_shapes(MSCLAP_AUDIOSET_CLASSES), None
    except ValueError as err:
        return {}, (f"this audio encoder's geometry cannot carry msclap's {MSCLAP_AUDIOSET_CLASSES}-class AudioSet "
                    f"head ({err})")


def _check_flavour(sd: dict[str, torch.Tensor], version: str, path) -> None:
    """Catch the wrong file early, with a message that says what it is."""
    if any(k.startswith("clap.base.") for k in sd) and not any(k.startswith("audio_encoder.") for k in sd):
        raise WeightsError(path, "this is a clapcap (captioning) checkpoint; load_msclap loads '2022' and '2023' CLAP models")
    has_htsat = any(k.startswith("audio_encoder.base.htsat.") for k in sd)
    has_cnn14 = any(k.startswith("audio_encoder.base.conv_block") for k in sd)
    if version == "2023" and has_cnn14 and not has_htsat:
        raise WeightsError(path, "version '2023' requested, but this is a 2022 checkpoint (CNN14 audio encoder)")
    if version == "2022" and has_htsat:
        raise WeightsError(path, "version '2022' requested, but this is a 2023 checkpoint (HTSAT audio encoder)")


def _is_gpt2_mask_constant(rest: str, t: torch.Tensor) -> bool:
    if rest.endswith("masked_bias"):
        return t.numel() == 1
    n = t.shape[-1]
    return t.ndim >= 2 and t.shape[-2] == n and torch.equal(t.reshape(n, n).bool(), torch.ones(n, n).tril().bool())


def _is_arange(t: torch.Tensor) -> bool:
    return torch.equal(t.reshape(-1).long(), torch.arange(t.numel()))


def _uninitialised_model(config, model_cls=None):
    """A CLAPModel from ``config`` without random initialisation (seconds for 160-200 M parameters, all
    about to be overwritten).  Safe because loading is strict: every parameter and persistent
    buffer is replaced, and the non-persistent buffers (window, HTSAT masks, position ids) are computed, not
    drawn.  ``no_init_weights`` is what transformers' own ``from_pretrained`` uses for the same purpose."""
    if model_cls is None:
        from .models.clap import CLAPModel as model_cls  # late: keeps ``import clapkit.msclap_weights`` light

    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # another transformers layout: pay for the initialisation
        return model_cls(config)
    with no_init_weights():
        return model_cls(config)


def load_msclap(path: str | Path, version: str = "2023", model: Any = None,
                config: str | Path | Mapping[str, Any] | None = None,
                state_dict: dict[str, torch.Tensor] | None = None) -> tuple[Any, LoadReport]:
    """Load an official msclap checkpoint into a clapkit ``CLAPModel``; returns ``(model in eval mode, report)``.

    The model is ``model`` if given, else built from ``config`` (a model config name, JSON path or dict;
    default: the shipped ``msclap-<version>``) without wasting time on random initialisation.  ``state_dict``:
    the file's ``read_msclap_state_dict(path)`` when the caller has already read it (not read twice).
    ``version="clapcap"``: ``clapcap_weights_2023.pth`` into a ``ClapCapModel`` (``clapkit.clapcap_weights``;
    default config ``clapcap-2023``).
    """
    if version == "clapcap":  # the captioning model: its own module, the same strictness
        from .clapcap_weights import load_clapcap

        return load_clapcap(path, model=model, config=config, state_dict=state_dict)
    if version not in VERSIONS:
        raise ValueError(f"msclap version must be one of {VERSIONS + ('clapcap',)}, got {version!r}")
    if model is not None and config is not None:
        raise ValueError("pass either model or config, not both")
    sd = read_msclap_state_dict(path) if state_dict is None else state_dict
    if model is None:
        model = _uninitialised_model(config if config is not None else f"msclap-{version}")
    mapped, report = map_msclap_state_dict(sd, version, model, path)
    model.load_state_dict(mapped, strict=True)
    describe_filterbank(report, model.audio.frontend, version)
    report.logit_scale = float(model.logit_scale.detach())
    return model.eval(), report


def describe_filterbank(report: LoadReport, frontend, version: str) -> None:
    """Record in ``report`` which known design the loaded mel filterbank is and whether it is the config's."""
    mel_fb = frontend.mel_fb
    configured = mel_filterbank(frontend.cfg).to(mel_fb.dtype)
    report.mel_fb_max_abs_diff = (mel_fb - configured).abs().max().item()
    report.mel_fb_matches_config = _close(mel_fb, configured, atol=1e-6)
    designs = known_filterbank_designs(frontend.cfg, version)
    report.mel_fb_design = next((name for name, fb in designs.items() if name != "as configured"
                                 and _close(mel_fb, fb, atol=1e-6)), None)
    if report.mel_fb_design is None and report.mel_fb_matches_config:
        report.mel_fb_design = "as configured"
