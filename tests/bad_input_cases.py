"""The bad-input corpus of tests/test_bad_inputs.py: every case is one bad input given to `metalab`.

A case is its command line (placeholders in braces, filled in per case by `Env.fill`), an optional
`setup(env)` that makes the bad file or folder in the case's own temporary folder, and a piece of
the one error line it must print. `usage=True` marks the malformed flags argparse itself refuses
(its usage lines, then one `metalab ...: error:` line).

Placeholders: {tmp} the case's folder; {run} a copy of a finished sine-wave MAML run (3
iterations, config.yaml + metrics.jsonl + checkpoint.pt), {ckpt} its checkpoint; {img} a
Prototypical Networks checkpoint trained on a folder of images, {maml_img} a 2-way MAML one;
{folder} a folder of 6 image classes, {support} a 2-class support folder, {queries} a folder of
query images; {omni} an Omniglot data folder made per case (see `omniglot`).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image


@dataclass
class Env:
    tmp: Path
    run: Path
    img: Path
    maml_img: Path
    folder: Path
    support: Path
    queries: Path

    @property
    def ckpt(self) -> Path:
        return self.run / "checkpoint.pt"

    @property
    def omni(self) -> Path:
        return self.tmp / "omni"

    def fill(self, argv: list[str]) -> list[str]:
        names = dict(
            tmp=self.tmp,
            run=self.run,
            ckpt=self.ckpt,
            img=self.img,
            maml_img=self.maml_img,
            folder=self.folder,
            support=self.support,
            queries=self.queries,
            omni=self.omni,
        )
        return [a.format(**names) for a in argv]


@dataclass
class Case:
    category: str
    name: str
    argv: list[str]
    match: str
    setup: Callable[[Env], None] | None = None
    usage: bool = False

    @property
    def id(self) -> str:
        return f"{self.category}-{self.name}"


CASES: list[Case] = []


def case(category, name, argv, match, setup=None, *, usage=False):
    CASES.append(Case(category, name, list(argv), match, setup, usage))


# ------------------------------------------------------------------------------------ makers


def png(size=(8, 8), value=0, mode="L") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, value).save(buf, format="PNG")
    return buf.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG declaring width x height 8-bit greyscale pixels, with a few bytes of image data: a
    decompression bomb's header without the bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def jpeg(size=(16, 16)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 200, 30)).save(buf, format="JPEG")
    return buf.getvalue()


def tiff_float(values) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(values, dtype=np.float32), "F").save(buf, format="TIFF")
    return buf.getvalue()


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(data, bytes) else path.write_text)(data)
    return path


def image_folder(root: Path, classes: int = 6, per_class: int = 4) -> Path:
    for k in range(classes):
        for i in range(per_class):
            write(root / f"class{k}" / f"{i}.png", png((12, 12), 20 * k + i))
    return root


class Reducer:
    """Unpickling this runs `os.system`: the code-running pickle a weights-only load refuses."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def edit_checkpoint(edit: Callable[[dict], None], which: str = "ckpt"):
    """A setup that loads the checkpoint, lets `edit` change its dict, and saves it back."""

    def setup(env: Env) -> None:
        path = env.ckpt if which == "ckpt" else getattr(env, which)
        state = torch.load(path, weights_only=True)
        edit(state)
        torch.save(state, path)

    return setup


def replace_file(data: Callable[[bytes], bytes] | bytes, which: str = "ckpt"):
    def setup(env: Env) -> None:
        path = env.ckpt if which == "ckpt" else getattr(env, which)
        path.write_bytes(data(path.read_bytes()) if callable(data) else data)

    return setup


def flip_at(where: Callable[[zipfile.ZipFile, bytes], int]):
    """A setup flipping one byte of the checkpoint, at the offset `where(zip, bytes)` finds."""

    def setup(env: Env) -> None:
        raw = bytearray(env.ckpt.read_bytes())
        with zipfile.ZipFile(io.BytesIO(bytes(raw))) as zf:
            at = where(zf, bytes(raw))
        raw[at] ^= 0xFF
        env.ckpt.write_bytes(bytes(raw))

    return setup


def _entry(suffix: str, part: str = "data"):
    """Offset of a byte of the entry whose name ends with `suffix`: the middle of its data, its
    local header's signature, its name in the local header, or its CRC in the central directory."""

    def where(zf: zipfile.ZipFile, raw: bytes) -> int:
        info = next(i for i in zf.infolist() if i.filename.endswith(suffix))
        local = info.header_offset
        name_len, extra_len = struct.unpack("<HH", raw[local + 26 : local + 30])
        if part == "data":
            return local + 30 + name_len + extra_len + info.compress_size // 2
        if part == "signature":
            return local + 1
        if part == "name":
            return local + 30 + name_len - 2
        offset = zf.start_dir  # the central directory's first record
        while True:  # walk its records to this entry's
            n, e, c = struct.unpack("<HHH", raw[offset + 28 : offset + 34])
            if raw[offset + 46 : offset + 46 + n].decode() == info.filename:
                return offset + 16  # its CRC-32 field
            offset += 46 + n + e + c

    return where


def _end_record(zf: zipfile.ZipFile, raw: bytes) -> int:
    return raw.rindex(b"PK\x05\x06") + 1


def _central_start(zf: zipfile.ZipFile, raw: bytes) -> int:
    return zf.start_dir + 2


# ------------------------------------------------------------------------------------ checkpoints

CK = "checkpoint"
EVAL = ["eval", "{ckpt}", "--tasks", "3"]
RESUME = ["train", "--run-dir", "{run}", "--resume", "--config", "{run}/config.yaml", "--iterations", "5"]
RESUME += ["--quiet", "--no-eval"]


def _drop(key):
    return edit_checkpoint(lambda s: s.pop(key))


def _set(key, value):
    def edit(s):
        s[key] = value() if callable(value) else value

    return edit_checkpoint(edit)


for key, what in (
    ("config", "the resolved config"),
    ("learner", "the learner's state"),
    ("iteration", "the iteration"),
):
    case(CK, f"eval-missing-{key}", EVAL, f"lacks {key!r} ({what})", _drop(key))
    case(CK, f"resume-missing-{key}", RESUME, f"lacks {key!r} ({what})", _drop(key))
for key in ("optimizer", "schedule", "rng"):
    case(CK, f"resume-missing-{key}", RESUME, f"lacks {key!r}", _drop(key))
case(CK, "eval-missing-format", EVAL, "is not a metalab checkpoint", _drop("format"))
case(CK, "eval-format-from-the-future", EVAL, "newer metalab", _set("format", "metalab-checkpoint-2"))
case(CK, "eval-format-not-a-string", EVAL, "is not a metalab checkpoint", _set("format", 1))
case(CK, "resume-format-from-the-future", RESUME, "newer metalab", _set("format", "metalab-checkpoint-9"))
for key, value, kind in (
    ("config", [1, 2], "list"),
    ("config", "maml", "str"),
    ("learner", [0.0], "list"),
    ("learner", lambda: torch.zeros(3), "Tensor"),
    ("iteration", "3", "str"),
    ("iteration", 3.0, "float"),
    ("iteration", True, "bool"),
    ("iteration", None, "NoneType"),
):
    case(CK, f"eval-{key}-a-{kind}", EVAL, f"{key!r}", _set(key, value))
case(CK, "eval-iteration-negative", EVAL, "'iteration' is -4, not >= 0", _set("iteration", -4))
for key, value, kind in (
    ("optimizer", [1], "list"),
    ("schedule", "constant", "str"),
    ("rng", [1, 2], "list"),
    ("rng", None, "NoneType"),
):
    case(CK, f"resume-{key}-a-{kind}", RESUME, f"{key!r}", _set(key, value))


def _edit_rng(edit):
    return edit_checkpoint(lambda s: edit(s["rng"]))


case(
    CK, "resume-rng-without-torch-state", RESUME, "does not fit this run", _edit_rng(lambda r: r.pop("torch"))
)
case(
    CK,
    "resume-rng-torch-state-a-string",
    RESUME,
    "does not fit this run",
    _edit_rng(lambda r: r.update(torch="x")),
)
case(
    CK,
    "resume-rng-torch-state-wrong-size",
    RESUME,
    "does not fit this run",
    _edit_rng(lambda r: r.update(torch=torch.zeros(7, dtype=torch.uint8))),
)
case(
    CK,
    "resume-rng-task-state-wrong-size",
    RESUME,
    "does not fit this run",
    _edit_rng(
        lambda r: r.update(
            tasks=torch.zeros(5, dtype=torch.uint8), rank_tasks=[torch.zeros(5, dtype=torch.uint8)]
        )
    ),
)
case(
    CK,
    "resume-written-by-two-processes",
    RESUME,
    "written by 2 process(es), this run has 1",
    _edit_rng(lambda r: r.update(rank_tasks=[r["tasks"], r["tasks"]])),
)


def _edit_optimizer(edit):
    return edit_checkpoint(lambda s: edit(s["optimizer"]))


def _first_moment(o, value):
    first = next(iter(o["state"]))
    o["state"][first]["exp_avg"] = value


case(
    CK,
    "resume-optimizer-moment-wrong-shape",
    RESUME,
    "does not fit this run",
    _edit_optimizer(lambda o: _first_moment(o, torch.zeros(3, 3))),
)
case(
    CK,
    "resume-optimizer-moment-a-string",
    RESUME,
    "optimizer state 'exp_avg' of parameter 0 is 'x', not a number or a tensor",
    _edit_optimizer(lambda o: _first_moment(o, "x")),
)
case(
    CK,
    "resume-optimizer-no-param-groups",
    RESUME,
    "does not fit this run",
    _edit_optimizer(lambda o: o.update(param_groups=[])),
)
case(
    CK,
    "resume-optimizer-step-a-string",
    RESUME,
    "does not fit this run",
    _edit_optimizer(lambda o: o["state"][next(iter(o["state"]))].update(step="three")),
)
case(
    CK,
    "resume-optimizer-lr-a-string",
    RESUME,
    "does not fit this run",
    _edit_optimizer(lambda o: o["param_groups"][0].update(lr="fast")),
)
case(
    CK,
    "resume-schedule-last-epoch-a-string",
    RESUME,
    "does not fit this run",
    edit_checkpoint(lambda s: s["schedule"].update(last_epoch="x")),
)
case(CK, "resume-seconds-a-string", RESUME, "'seconds'", _set("seconds", "ten"))
case(CK, "resume-seconds-negative", RESUME, "'seconds'", _set("seconds", -5.0))


def _edit_learner(edit, which="ckpt"):
    return edit_checkpoint(lambda s: edit(s["learner"]), which)


def _first(learner):
    return next(k for k, v in learner.items() if torch.is_tensor(v) and v.is_floating_point())


case(
    CK,
    "eval-weight-wrong-shape",
    EVAL,
    "does not fit its own config",
    _edit_learner(lambda d: d.update({_first(d): torch.zeros(2, 2)})),
)
case(
    CK,
    "eval-all-weights-wrong-shape",
    EVAL,
    "size mismatch",
    _edit_learner(lambda d: d.update({k: torch.zeros(1) for k in d})),
)
case(CK, "eval-weight-missing", EVAL, "Missing key", _edit_learner(lambda d: d.pop(_first(d))))
case(CK, "eval-weight-extra", EVAL, "Unexpected key", _edit_learner(lambda d: d.update(extra=torch.zeros(1))))
case(
    CK,
    "eval-weight-not-a-tensor",
    EVAL,
    "does not fit its own config",
    _edit_learner(lambda d: d.update({_first(d): [1.0]})),
)
case(CK, "eval-learner-empty", EVAL, "Missing key", _edit_learner(lambda d: d.clear()))
for bad in ("nan", "inf", "-inf"):
    case(
        CK,
        f"eval-weight-{bad}",
        EVAL,
        "holds non-finite weights",
        _edit_learner(lambda d, b=bad: d[_first(d)].view(-1).__setitem__(0, float(b))),
    )
    case(
        CK,
        f"resume-weight-{bad}",
        RESUME,
        "holds non-finite weights",
        _edit_learner(lambda d, b=bad: d[_first(d)].view(-1).__setitem__(0, float(b))),
    )
case(
    CK,
    "resume-weight-wrong-shape",
    RESUME,
    "does not fit this run",
    _edit_learner(lambda d: d.update({_first(d): torch.zeros(2, 2)})),
)


def _edit_config(**changes):
    return edit_checkpoint(lambda s: s["config"].update(changes))


case(
    CK,
    "eval-config-unknown-algorithm",
    EVAL,
    "holds a config this metalab cannot run: config key 'algorithm' must be one of",
    _edit_config(algorithm="mamI"),
)
case(CK, "eval-config-unknown-benchmark", EVAL, "'benchmark' must be one of", _edit_config(benchmark="mnist"))
case(CK, "eval-config-shots-a-string", EVAL, "'shots' must be an integer", _edit_config(shots="two"))
case(CK, "eval-config-unknown-key", EVAL, "unknown config key 'zzz'", _edit_config(zzz=1))
case(CK, "eval-config-other-hidden-widths", EVAL, "does not fit its own config", _edit_config(hidden=[20]))
case(CK, "eval-config-negative-ways", EVAL, "'ways' must be >= 1", _edit_config(ways=-1))
case(CK, "eval-config-null-algorithm", EVAL, "'algorithm' must not be empty", _edit_config(algorithm=None))
case(
    CK,
    "resume-config-unknown-algorithm",
    RESUME,
    "'algorithm' must be one of",
    _edit_config(algorithm="nope"),
)

# The file itself: flipped bytes, truncation, wrong kinds of file.
for suffix, part in (
    ("data.pkl", "data"),
    ("data/0", "data"),
    ("data/1", "data"),
    ("data/2", "data"),
    ("byteorder", "data"),
    ("version", "data"),
    ("data.pkl", "signature"),
    ("data/0", "signature"),
    ("data.pkl", "name"),
    ("data/0", "name"),
    ("data.pkl", "crc"),
    ("data/1", "crc"),
):
    case(
        CK,
        f"eval-flipped-{part}-of-{suffix.replace('/', '')}",
        EVAL,
        "checkpoint {ckpt}",
        flip_at(_entry(suffix, part)),
    )
case(CK, "eval-flipped-central-directory", EVAL, "checkpoint {ckpt}", flip_at(_central_start))
case(CK, "eval-flipped-end-record", EVAL, "checkpoint {ckpt}", flip_at(_end_record))
for length in (1, 4, 30, 100, 512, "quarter", "half", "-100", "-22", "-1"):

    def cut(raw, n=length):
        if n == "quarter":
            return raw[: len(raw) // 4]
        if n == "half":
            return raw[: len(raw) // 2]
        return raw[: int(n)] if int(n) > 0 else raw[: len(raw) + int(n)]

    case(CK, f"eval-truncated-to-{length}", EVAL, "is corrupt or truncated", replace_file(cut))
case(CK, "eval-empty-file", EVAL, "is corrupt or truncated", replace_file(b""))
case(CK, "eval-text-file", EVAL, "is corrupt or truncated", replace_file(b"iteration: 3\nlearner: none\n"))
case(CK, "eval-a-png", EVAL, "is corrupt or truncated", replace_file(png()))
case(CK, "eval-a-plain-zip", EVAL, "", lambda env: _plain_zip(env.ckpt))
case(
    CK,
    "eval-a-raw-pickle",
    EVAL,
    "is corrupt or truncated",
    replace_file(pickle.dumps({"format": "metalab-checkpoint-1"})),
)
case(
    CK,
    "eval-legacy-torch-format",
    EVAL,
    "is corrupt or truncated",
    lambda env: torch.save({"a": 1}, env.ckpt, _use_new_zipfile_serialization=False),
)
case(
    CK, "eval-a-tensor", EVAL, "is not a metalab checkpoint", lambda env: torch.save(torch.zeros(3), env.ckpt)
)
case(CK, "eval-a-list", EVAL, "is not a metalab checkpoint", lambda env: torch.save([1, 2], env.ckpt))
case(
    CK,
    "eval-another-programs-dict",
    EVAL,
    "is not a metalab checkpoint",
    lambda env: torch.save({"model": torch.zeros(2)}, env.ckpt),
)


def _plain_zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "not a checkpoint")


def _code_pickle(env: Env) -> None:
    torch.save(
        {"format": "metalab-checkpoint-1", "iteration": 1, "hook": Reducer(str(env.tmp / "ran"))}, env.ckpt
    )


case(CK, "eval-code-running-pickle", EVAL, "refused: loading it would run code", _code_pickle)
case(CK, "resume-code-running-pickle", RESUME, "refused: loading it would run code", _code_pickle)
case(CK, "eval-missing-file", ["eval", "{tmp}/nope.pt"], "checkpoint not found")
case(CK, "eval-a-directory", ["eval", "{run}"], "is a directory")
case(
    CK,
    "eval-dangling-symlink",
    ["eval", "{tmp}/link.pt"],
    "checkpoint not found",
    lambda env: (env.tmp / "link.pt").symlink_to(env.tmp / "gone.pt"),
)
case(
    CK, "resume-truncated", RESUME, "is corrupt or truncated", replace_file(lambda raw: raw[: len(raw) // 2])
)
case(CK, "resume-flipped-weights", RESUME, "fails its CRC check", flip_at(_entry("data/0")))
case(CK, "resume-empty-file", RESUME, "is corrupt or truncated", replace_file(b""))
case(CK, "resume-a-directory", RESUME, "is a directory", lambda env: (env.ckpt.unlink(), env.ckpt.mkdir()))
case(CK, "resume-missing", RESUME, "checkpoint not found", lambda env: env.ckpt.unlink())
# The same checks behind every command that reads a checkpoint.
PLOT = ["plot", "{ckpt}", "--out", "{tmp}/fig.png"]
SERVE = ["serve", "{ckpt}"]
PREDICT = ["predict", "{img}", "--support", "{support}", "{queries}"]
for command, argv in (("plot", PLOT), ("serve", ["serve", "{img}"]), ("predict", PREDICT)):
    which = "ckpt" if command == "plot" else "img"
    case(
        CK,
        f"{command}-truncated",
        argv,
        "is corrupt or truncated",
        replace_file(lambda raw: raw[:100], which),
    )
    case(
        CK,
        f"{command}-missing-learner",
        argv,
        "lacks 'learner'",
        edit_checkpoint(lambda s: s.pop("learner"), which),
    )
    case(
        CK,
        f"{command}-nan-weights",
        argv,
        "holds non-finite weights",
        _edit_learner(lambda d: d[_first(d)].view(-1).__setitem__(0, float("nan")), which),
    )
    case(CK, f"{command}-empty-file", argv, "is corrupt or truncated", replace_file(b"", which))
    case(
        CK,
        f"{command}-format-from-the-future",
        argv,
        "newer metalab",
        edit_checkpoint(lambda s: s.update(format="metalab-checkpoint-3"), which),
    )
case(CK, "plot-baseline-missing", [*PLOT, "--baseline", "{tmp}/nope.pt"], "checkpoint not found")
case(
    CK,
    "plot-baseline-corrupt",
    [*PLOT, "--baseline", "{tmp}/b.pt"],
    "is corrupt or truncated",
    lambda env: write(env.tmp / "b.pt", b"junk"),
)
case(CK, "plot-an-image-checkpoint", ["plot", "{img}", "--out", "{tmp}/f.png"], "plot draws sine-wave tasks")
case(
    CK,
    "predict-a-sine-checkpoint",
    ["predict", "{ckpt}", "--support", "{support}", "{queries}"],
    "predict labels images",
)
case(CK, "serve-a-sine-checkpoint", ["serve", "{ckpt}"], "was trained on sine")
case(CK, "serve-missing", ["serve", "{tmp}/nope.pt"], "checkpoint not found")
case(
    CK,
    "predict-missing",
    ["predict", "{tmp}/nope.pt", "--support", "{support}", "{queries}"],
    "checkpoint not found",
)

# ------------------------------------------------------------------------------------ Omniglot archives

AR = "archive"
# Tiny archives in the official layout, 20 drawings per character; the test patches the official
# counts to these (see test_bad_inputs.py), so that each case fails on its own defect, not on the counts.
OMNI_LAYOUT = {
    "images_background": {"Latin": ["character01", "character02"], "Hebrew": ["character01"]},
    "images_evaluation": {"Kannada": ["character01"], "Gurmukhi": ["character41", "character42"]},
}
OMNI = ["train", "--benchmark", "omniglot", "--data-dir", "{omni}", "--algorithm", "protonet", "--ways", "2"]
OMNI += [
    "--shots",
    "1",
    "--queries",
    "1",
    "--kernels",
    "off",
    "--quiet",
    "--no-eval",
    "--run-dir",
    "{tmp}/out",
]
_SMALL_PNG = png((10, 10), 255, "1")


def omniglot(
    extra=None,
    replace=None,
    drop=(),
    compression=zipfile.ZIP_DEFLATED,
    after=None,
    archive="images_background",
):
    """A setup writing both tiny archives into {omni}: `extra` entries added to `archive`, `replace`
    entries' bytes swapped, `drop` entries left out, then `after(path)` applied to its file."""

    def setup(env: Env) -> None:
        env.omni.mkdir()
        for name, layout in OMNI_LAYOUT.items():
            path = env.omni / f"{name}.zip"
            with zipfile.ZipFile(path, "w", compression) as zf:
                zf.writestr(f"{name}/", b"")
                for alphabet, characters in layout.items():
                    for character in characters:
                        for k in range(20):
                            entry = f"{name}/{alphabet}/{character}/{k:02d}.png"
                            if name == archive and entry in drop:
                                continue
                            data = (replace or {}).get(entry, _SMALL_PNG) if name == archive else _SMALL_PNG
                            zf.writestr(entry, data)
                if name == archive:
                    for entry, data in (extra or {}).items():
                        if isinstance(data, zipfile.ZipInfo):
                            zf.writestr(data, b"../../../../etc/passwd")
                        else:
                            zf.writestr(entry, data)
            if name == archive and after is not None:
                after(path)

    return setup


def _symlink_entry() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("images_background/Latin/character01/20.png")
    info.create_system = 3  # unix
    info.external_attr = 0o120777 << 16  # a symbolic link
    return info


def _flip_stored_png(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo("images_background/Latin/character01/05.png")
    raw[info.header_offset + 30 + len(info.filename) + info.file_size // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


FIRST = "images_background/Latin/character01/00.png"
for name, entry in (
    ("parent-in-name", "images_background/../evil.png"),
    ("parent-at-start", "../../evil.png"),
    ("absolute-path", "/tmp/evil.png"),
    ("backslash-path", "images_background\\..\\evil.png"),
    ("drive-letter", "C:/evil.png"),
    ("dot-folder", "images_background/./Latin/x.png"),
):
    case(AR, f"traversal-{name}", OMNI, "unsafe entry", omniglot(extra={entry: _SMALL_PNG}))
case(
    AR,
    "symlink-entry",
    OMNI,
    "symbolic link",
    omniglot(extra={"link": _symlink_entry()}, drop=("images_background/Latin/character01/19.png",)),
)
case(
    AR,
    "crc-error",
    OMNI,
    "cannot read entry 'images_background/Latin/character01/05.png'",
    omniglot(compression=zipfile.ZIP_STORED, after=_flip_stored_png),
)
case(
    AR,
    "png-bomb",
    OMNI,
    "beyond the 4,194,304 pixels",
    omniglot(replace={FIRST: png_header_only(3000, 3000)}),
)
case(
    AR,
    "png-bomb-beyond-pillow",
    OMNI,
    "DecompressionBombError",
    omniglot(replace={FIRST: png_header_only(100_000, 100_000)}),
)
case(
    AR,
    "entry-over-a-megabyte",
    OMNI,
    "beyond the 1,048,576 allowed",
    omniglot(replace={FIRST: _SMALL_PNG + bytes(2 << 20)}),
)
case(AR, "zero-byte-png", OMNI, f"cannot read entry {FIRST!r}", omniglot(replace={FIRST: b""}))
case(AR, "not-a-png", OMNI, f"cannot read entry {FIRST!r}", omniglot(replace={FIRST: b"GIF89a not really"}))
case(
    AR,
    "truncated-png",
    OMNI,
    f"cannot read entry {FIRST!r}",
    omniglot(replace={FIRST: png((40, 40), 3)[:60]}),
)
case(
    AR,
    "entry-outside-the-root",
    OMNI,
    "is outside the archive root",
    omniglot(extra={"other/Latin/character01/x.png": _SMALL_PNG}),
)
case(
    AR,
    "entry-too-deep",
    OMNI,
    "unexpected entry",
    omniglot(extra={"images_background/Latin/character01/sub/x.png": _SMALL_PNG}),
)
case(
    AR,
    "folder-too-deep",
    OMNI,
    "unexpected folder",
    omniglot(extra={"images_background/Latin/character01/sub/": b""}),
)
case(
    AR,
    "not-a-png-name",
    OMNI,
    "unexpected entry",
    omniglot(extra={"images_background/Latin/character01/notes.txt": b"x"}),
)
case(
    AR,
    "image-beside-the-alphabets",
    OMNI,
    "unexpected entry",
    omniglot(extra={"images_background/Latin/x.png": _SMALL_PNG}),
)
case(
    AR,
    "characters-with-19-and-21-images",
    OMNI,
    "Hebrew/character01 has 21 images, expected 20",
    omniglot(drop=(FIRST,), extra={"images_background/Hebrew/character01/20.png": _SMALL_PNG}),
)
case(
    AR,
    "wrong-counts",
    OMNI,
    "expected 2 alphabets / 3 characters / 60 PNGs",
    omniglot(extra={"images_background/Greek/character01/00.png": _SMALL_PNG}),
)
case(AR, "unofficial-alphabet-names", OMNI, "are the alphabet folder names the official ones?", omniglot())
case(AR, "empty-zip", OMNI, "found 0 / 0 / 0", omniglot(after=lambda p: zipfile.ZipFile(p, "w").close()))
case(AR, "not-a-zip", OMNI, "not a readable zip file", omniglot(after=lambda p: p.write_text("hello")))
case(
    AR,
    "truncated-zip",
    OMNI,
    "not a readable zip file",
    omniglot(after=lambda p: p.write_bytes(p.read_bytes()[:2000])),
)
case(AR, "zero-byte-zip", OMNI, "not a readable zip file", omniglot(after=lambda p: p.write_bytes(b"")))
case(
    AR,
    "missing-evaluation-zip",
    OMNI,
    "images_evaluation.zip not found",
    omniglot(after=lambda p: p.unlink(), archive="images_evaluation"),
)
case(
    AR,
    "archive-a-directory",
    OMNI,
    "images_background.zip",
    omniglot(after=lambda p: (p.unlink(), p.mkdir())),
)
case(AR, "missing-data-dir", OMNI, "images_background.zip not found")
case(AR, "data-dir-a-file", OMNI, "images_background.zip not found", lambda env: write(env.omni, "x"))
case(
    AR,
    "cache-folder-a-file",
    OMNI,
    "cache folder",
    omniglot(after=lambda p: write(p.parent.parent / "xdg" / "metalab" / "omniglot", "x")),
)
case(
    AR,
    "cache-file-corrupt",
    OMNI,
    "is corrupt or incomplete",
    omniglot(after=lambda p: _corrupt_cache(p)),
)


def _corrupt_cache(zip_path: Path) -> None:
    import hashlib

    digest = hashlib.sha256(zip_path.read_bytes()).hexdigest()
    write(
        zip_path.parent.parent
        / "xdg"
        / "metalab"
        / "omniglot"
        / f"images_background-{digest[:16]}-28px-v1.pt",
        b"junk",
    )


# ------------------------------------------------------------------------------------ image folders

IF = "folder"
FOLDER = ["train", "--benchmark", "folder", "--data-dir", "{tmp}/f", "--algorithm", "protonet", "--ways", "2"]
FOLDER += [
    "--shots",
    "1",
    "--queries",
    "1",
    "--kernels",
    "off",
    "--quiet",
    "--no-eval",
    "--run-dir",
    "{tmp}/out",
]


def folder(change=None, classes=6, per_class=4):
    def setup(env: Env) -> None:
        image_folder(env.tmp / "f", classes, per_class)
        if change is not None:
            change(env.tmp / "f")

    return setup


def _only(path_data):
    """A change replacing class0's images by the given (name, bytes) files."""

    def change(root: Path) -> None:
        for p in (root / "class0").iterdir():
            p.unlink()
        for name, data in path_data:
            write(root / "class0" / name, data)

    return change


case(IF, "missing", FOLDER, "image folder not found")
case(
    IF,
    "a-file",
    FOLDER,
    "is a file; expected a folder of class folders",
    lambda env: write(env.tmp / "f", "x"),
)
case(IF, "empty", FOLDER, "has no class folders", lambda env: (env.tmp / "f").mkdir())
case(
    IF,
    "only-files-no-class-folders",
    FOLDER,
    "has no class folders",
    lambda env: write(env.tmp / "f" / "a.png", png()),
)
case(IF, "one-class", FOLDER, "has 1 classes: too few", folder(classes=1))
case(IF, "too-few-classes-for-the-ways", [*FOLDER, "--ways", "5"], "too few to hold out", folder(classes=6))
case(
    IF,
    "too-few-images-for-shots-and-queries",
    FOLDER,
    "fewer than shots + queries = 1 + 1 = 2",
    folder(per_class=1),
)
case(
    IF,
    "one-class-short",
    FOLDER,
    "class1 has 1 examples",
    folder(lambda r: [p.unlink() for p in sorted((r / "class1").iterdir())[1:]]),
)
case(
    IF,
    "non-image-files-only",
    FOLDER,
    "has no images",
    folder(_only([("notes.txt", "x"), ("data.csv", "1,2")])),
)
case(IF, "hidden-files-only", FOLDER, "has no images", folder(_only([(".a.png", png())])))
case(IF, "nested-junk-only", FOLDER, "has no images", folder(_only([("deeper/a.png", png())])))
case(
    IF,
    "a-folder-named-like-an-image",
    FOLDER,
    "has no images",
    folder(lambda r: _only([])(r) or (r / "class0" / "x.png").mkdir()),
)
case(
    IF,
    "corrupt-image",
    FOLDER,
    "cannot read image",
    folder(_only([("a.png", os.urandom(300)), ("b.png", png())])),
)
case(IF, "zero-byte-image", FOLDER, "cannot read image", folder(_only([("a.png", b""), ("b.png", png())])))
case(
    IF,
    "truncated-png",
    FOLDER,
    "cannot read image",
    folder(_only([("a.png", png((64, 64), 7)[:70]), ("b.png", png())])),
)
case(
    IF,
    "truncated-jpeg",
    FOLDER,
    "cannot read image",
    folder(_only([("a.jpg", jpeg((64, 64))[:300]), ("b.png", png())])),
)
case(
    IF, "text-named-jpeg", FOLDER, "cannot read image", folder(_only([("a.jpg", "hello"), ("b.png", png())]))
)
case(
    IF,
    "huge-dimensions",
    FOLDER,
    "cannot read image",
    folder(_only([("a.png", png_header_only(100_000, 100_000)), ("b.png", png())])),
)
case(
    IF,
    "huge-dimensions-below-pillows-limit",
    FOLDER,
    "cannot read image",
    folder(_only([("a.png", png_header_only(12_000, 12_000)), ("b.png", png())])),
)
case(
    IF,
    "negative-float-tiff",
    FOLDER,
    "with values in [-1.0",
    folder(_only([("a.tif", tiff_float([[-1.0, 0.5]])), ("b.png", png())])),
)
case(
    IF,
    "nan-float-tiff",
    FOLDER,
    "with values in [nan",
    folder(_only([("a.tif", tiff_float([[float("nan"), 0.5]])), ("b.png", png())])),
)
case(
    IF,
    "broken-gif",
    FOLDER,
    "cannot read image",
    folder(_only([("a.gif", b"GIF89a" + bytes(20)), ("b.png", png())])),
)
case(
    IF,
    "dangling-symlink-only",
    FOLDER,
    "has no images",
    folder(lambda r: _only([])(r) or (r / "class0" / "a.png").symlink_to(r / "gone.png")),
)

PR = "predict"


def support(change=None, classes=2, per_class=2, name="s"):
    def setup(env: Env) -> None:
        image_folder(env.tmp / name, classes, per_class)
        if change is not None:
            change(env.tmp / name)

    return setup


PRED = ["predict", "{img}", "--support", "{tmp}/s", "{queries}"]
case(PR, "support-missing", PRED, "image folder not found")
case(
    PR,
    "support-a-file",
    PRED,
    "is a file; expected a folder of class folders",
    lambda env: write(env.tmp / "s", "x"),
)
case(PR, "support-empty", PRED, "has no class folders", lambda env: (env.tmp / "s").mkdir())
case(PR, "support-one-class", PRED, "needs at least 2 class folders", support(classes=1))
case(
    PR,
    "support-corrupt-image",
    PRED,
    "cannot read image",
    support(_only([("a.png", b"\x89PNG\r\n\x1a\nxx")])),
)
case(PR, "support-class-without-images", PRED, "has no images", support(_only([("a.txt", "x")])))
case(
    PR,
    "fixed-head-wrong-class-count",
    ["predict", "{maml_img}", "--support", "{tmp}/s", "{queries}"],
    "needs exactly 2 class folders",
    support(classes=3),
)
case(
    PR,
    "query-missing",
    ["predict", "{img}", "--support", "{support}", "{tmp}/nope.png"],
    "query image or folder not found",
)
case(
    PR,
    "query-folder-empty",
    ["predict", "{img}", "--support", "{support}", "{tmp}/q"],
    "holds no images",
    lambda env: (env.tmp / "q").mkdir(),
)
case(
    PR,
    "query-folder-non-images",
    ["predict", "{img}", "--support", "{support}", "{tmp}/q"],
    "holds no images",
    lambda env: write(env.tmp / "q" / "a.txt", "x"),
)
case(
    PR,
    "query-corrupt-image",
    ["predict", "{img}", "--support", "{support}", "{tmp}/q.png"],
    "cannot read image",
    lambda env: write(env.tmp / "q.png", b"junk"),
)
case(
    PR,
    "query-a-text-file",
    ["predict", "{img}", "--support", "{support}", "{tmp}/q.txt"],
    "cannot read image",
    lambda env: write(env.tmp / "q.txt", "x"),
)
case(
    PR,
    "query-zero-byte",
    ["predict", "{img}", "--support", "{support}", "{tmp}/q.png"],
    "cannot read image",
    lambda env: write(env.tmp / "q.png", b""),
)
case(
    PR,
    "steps-for-a-learner-without-inner-loop",
    [*PREDICT, "--steps", "3"],
    "steps applies to learners with an inner loop",
)
case(
    PR,
    "steps-negative",
    ["predict", "{maml_img}", "--support", "{support}", "{queries}", "--steps", "-1"],
    "steps must be between 0 and",
)
case(
    PR,
    "steps-too-many",
    ["predict", "{maml_img}", "--support", "{support}", "{queries}", "--steps", "100000"],
    "steps must be",
)
case(PR, "steps-not-a-number", [*PREDICT, "--steps", "x"], "invalid int value", usage=True)
case(PR, "csv-a-directory", [*PREDICT, "--csv", "{tmp}"], "--csv")
case(
    PR,
    "csv-under-a-file",
    [*PREDICT, "--csv", "{tmp}/f/p.csv"],
    "is a file, not a folder",
    lambda env: write(env.tmp / "f", "x"),
)
case(PR, "device-unknown", [*PREDICT, "--device", "tpu"], "tpu")
case(PR, "no-support-flag", ["predict", "{img}", "{queries}"], "--support", usage=True)
case(
    PR,
    "no-queries",
    ["predict", "{img}", "--support", "{support}"],
    "the following arguments are required",
    usage=True,
)

# ------------------------------------------------------------------------------------ CSV files

CS = "csv"
TAIL = ["--quiet", "--no-eval", "--run-dir", "{tmp}/out"]
CSV = ["train", "--benchmark", "csv", "--data-dir", "{tmp}/d.csv", "--csv-label", "label", "--algorithm"]
CSV += ["protonet", "--ways", "2", "--shots", "1", "--queries", "1", *TAIL]
REG = ["train", "--benchmark", "csv", "--data-dir", "{tmp}/d.csv", "--csv-target", "y", "--csv-task", "shop"]
REG += ["--shots", "2", "--queries", "2", *TAIL]


def table(change=None, text=None, regression=False):
    """A setup writing {tmp}/d.csv: a good table (6 classes x 4 rows, or 6 shops x 5 rows), with
    `change(lines)` applied to its lines, or `text` (str or bytes) as it is."""

    def setup(env: Env) -> None:
        if text is not None:
            write(env.tmp / "d.csv", text)
            return
        if regression:
            lines = ["shop,x,y"] + [f"s{t},{i * 0.5},{t + i}" for t in range(6) for i in range(5)]
        else:
            lines = ["a,b,label"] + [f"{k + i * 0.1},{k * 2 - i},c{k}" for k in range(6) for i in range(4)]
        if change is not None:
            change(lines)
        write(env.tmp / "d.csv", "\n".join(lines) + "\n")

    return setup


def cell(row: int, column: int, value: str):
    def change(lines):
        cells = lines[row].split(",")
        cells[column] = value
        lines[row] = ",".join(cells)

    return change


for name, value in (
    ("1e39", "1e39"),
    ("-1e39", "-1e39"),
    ("nan", "nan"),
    ("NaN", "NaN"),
    ("inf", "inf"),
    ("-inf", "-inf"),
    ("empty", ""),
    ("word", "abc"),
    ("two-dots", "1.2.3"),
):
    match = "beyond the float32 range" if "e39" in name else "is not a finite number"
    case(CS, f"feature-{name}", CSV, f"line 3, column 'b': {value!r}", table(cell(2, 1, value)))
for name, value in (("nan", "nan"), ("inf", "inf"), ("word", "x"), ("1e39", "1e39")):
    case(CS, f"target-{name}", REG, f"column 'y': {value!r}", table(cell(4, 2, value), regression=True))
case(CS, "float-label-1.5", CSV, "1.5 has 1 examples", table(cell(5, 2, "1.5")))
case(CS, "missing-label-column", [*CSV, "--csv-label", "species"], "has no label column 'species'", table())
case(
    CS,
    "missing-target-column",
    [*REG, "--csv-target", "sales"],
    "has no target column 'sales'",
    table(regression=True),
)
case(
    CS,
    "missing-task-column",
    [*REG, "--csv-task", "store"],
    "has no task column 'store'",
    table(regression=True),
)
case(CS, "missing-feature-column", [*CSV, "--csv-features", "a", "zz"], "has no feature column 'zz'", table())
case(
    CS,
    "label-as-a-feature",
    [*CSV, "--csv-features", "a", "label"],
    "cannot be both a feature and the label",
    table(),
)
case(
    CS,
    "only-the-label-column",
    CSV,
    "has no feature columns",
    table(text="label\n" + "".join(f"c{k}\n" for k in range(6) for _ in range(4))),
)
case(CS, "empty-file", CSV, "no header", table(text=""))
case(CS, "header-only", CSV, "no data rows", table(text="a,b,label\n"))
case(CS, "blank-lines-only", CSV, "no data rows", table(text="a,b,label\n\n , ,\n\n"))
case(
    CS,
    "ragged-row-long",
    CSV,
    "line 4: 4 fields, but the header has 3",
    table(lambda ls: ls.__setitem__(3, ls[3] + ",9")),
)
case(
    CS,
    "ragged-row-short",
    CSV,
    "line 4: 2 fields, but the header has 3",
    table(lambda ls: ls.__setitem__(3, "1,c0")),
)
case(CS, "huge-field", CSV, "field larger than field limit", table(cell(2, 0, "1" * 200_000)))
case(
    CS, "duplicate-header", CSV, "'a' appear more than once", table(lambda ls: ls.__setitem__(0, "a,a,label"))
)
case(CS, "utf16-with-bom", CSV, "UTF-8", table(text="a,b,label\n1,2,c0\n".encode("utf-16")))
case(CS, "latin1-bytes", CSV, "UTF-8", table(text="a,b,label\n1,2,caf\xe9\n".encode("latin-1")))
case(CS, "nul-bytes", CSV, "d.csv, line", table(text=b"a,b,label\n1,\x002,c0\n"))
case(CS, "unterminated-quote", CSV, "unexpected end of data", table(text='a,b,label\n1,2,"c0\n3,4,c1\n'))
case(
    CS,
    "one-class",
    CSV,
    "has 1 classes",
    table(text="a,b,label\n" + "".join(f"{i},{i},c0\n" for i in range(8))),
)
case(CS, "a-directory", CSV, "is a folder; give the CSV file", lambda env: (env.tmp / "d.csv").mkdir())
case(CS, "missing", CSV, "CSV file not found")
case(
    CS,
    "regression-task-too-small",
    REG,
    "task 's0' has 3 rows, fewer than shots + queries",
    table(lambda ls: ls.pop(1) and ls.pop(1), regression=True),
)
case(CS, "binary-file", CSV, "d.csv", table(text=zlib.compress(os.urandom(2000))))

# ------------------------------------------------------------------------------------ configs

CF = "config"
CONF = ["train", "--config", "{tmp}/c.yaml", *TAIL]


def yaml_file(text: str | bytes):
    return lambda env: write(env.tmp / "c.yaml", text)


for name, text, match in (
    ("unknown-key", "meta_bach: 4\n", "unknown config key 'meta_bach' (did you mean 'meta_batch'?)"),
    ("unknown-key-no-match", "zzzz: 4\n", "unknown config key 'zzzz'"),
    ("shots-a-word", "shots: two\n", "'shots' must be an integer, got 'two'"),
    ("ways-a-float", "ways: 2.5\n", "'ways' must be an integer"),
    ("iterations-a-bool", "iterations: true\n", "'iterations' must be an integer"),
    ("hidden-a-word", "hidden: abc\n", "'hidden' must be a list of integers"),
    ("hidden-floats", "hidden: [1.5, 2]\n", "'hidden' must be a list of integers"),
    ("hidden-negative", "hidden: [40, -3]\n", "'hidden' must hold widths >= 1"),
    ("hidden-zero", "hidden: [0]\n", "'hidden' must hold widths >= 1"),
    ("hidden-huge", "hidden: [100000, 100000]\n", "more than this machine's"),
    ("outer-lr-a-word", "outer_lr: fast\n", "'outer_lr' must be a number"),
    ("outer-lr-inf", "outer_lr: .inf\n", "'outer_lr' must be a number"),
    ("outer-lr-nan", "outer_lr: .nan\n", "'outer_lr' must be a number"),
    ("outer-lr-negative", "outer_lr: -1\n", "'outer_lr' must be > 0"),
    ("outer-lr-zero", "outer_lr: 0\n", "'outer_lr' must be > 0"),
    ("invert-maybe", "invert: maybe\n", "'invert' must be true or false"),
    ("seed-a-float", "seed: 1.5\n", "'seed' must be an integer"),
    ("eval-steps-negative", "eval_steps: [-1]\n", "'eval_steps' must hold steps >= 0"),
    ("eval-steps-a-word", "eval_steps: x\n", "'eval_steps' must be a list of integers"),
    ("eval-steps-too-many", "eval_steps: [100000]\n", "'eval_steps' must hold steps <= 10,000"),
    ("plugins-a-number", "plugins: 3\n", "'plugins' must be a list of strings"),
    ("csv-features-a-number", "csv_features: 5\n", "'csv_features' must be a list of strings"),
    ("ways-zero", "ways: 0\n", "'ways' must be >= 1"),
    ("shots-zero", "shots: 0\n", "'shots' must be >= 1"),
    ("queries-negative", "queries: -1\n", "'queries' must be >= 1"),
    ("meta-batch-zero", "meta_batch: 0\n", "'meta_batch' must be >= 1"),
    ("iterations-zero", "iterations: 0\n", "'iterations' must be >= 1"),
    ("val-tasks-zero", "val_tasks: 0\n", "'val_tasks' must be >= 1"),
    ("test-tasks-negative", "test_tasks: -5\n", "'test_tasks' must be >= 1"),
    ("log-every-zero", "log_every: 0\n", "'log_every' must be >= 1"),
    ("val-every-negative", "val_every: -1\n", "'val_every' must be >= 0"),
    ("checkpoint-every-negative", "checkpoint_every: -1\n", "'checkpoint_every' must be >= 0"),
    ("image-size-zero", "image_size: 0\n", "'image_size' must be >= 1"),
    (
        "image-size-huge",
        "benchmark: folder\ndata_dir: x\nalgorithm: protonet\nimage_size: 100000\n",
        "more than this machine's",
    ),
    ("threads-zero", "threads: 0\n", "'threads' must be >= 1"),
    ("task-threads-negative", "task_threads: -1\n", "'task_threads' must be >= 1"),
    ("max-minutes-zero", "max_minutes: 0\n", "'max_minutes' must be > 0"),
    ("dist-timeout-negative", "dist_timeout: -1\n", "'dist_timeout' must be > 0"),
    ("decay-factor-zero", "lr_schedule: step\nlr_decay_factor: 0\n", "0 < 'lr_decay_factor' <= 1"),
    ("decay-factor-above-one", "lr_schedule: step\nlr_decay_factor: 1.5\n", "0 < 'lr_decay_factor' <= 1"),
    ("decay-every-zero", "lr_schedule: step\nlr_decay_every: 0\n", "'lr_decay_every' >= 1"),
    ("unclosed-bracket", "hidden: [40, 40\n", "is not valid YAML"),
    ("tab-indentation", "shots:\n\t- 1\n", "is not valid YAML"),
    ("bad-indentation", "shots: 1\n  ways: 2\n", "is not valid YAML"),
    ("a-list", "- shots: 1\n- ways: 2\n", "c.yaml is a YAML list, not a mapping of config keys to values"),
    ("a-string", "just some text\n", "c.yaml is a YAML str, not a mapping"),
    ("a-number", "42\n", "c.yaml is a YAML int, not a mapping"),
    ("key-twice", "shots: 5\nshots: 6\n", "'shots' is given twice (line 2)"),
    (
        "other-algorithms-key",
        "algorithm: maml\nfce: true\n",
        "config key 'fce' applies to matching, not to maml",
    ),
    (
        "other-algorithms-key-protonet",
        "benchmark: folder\ndata_dir: x\nalgorithm: protonet\ninner_lr: 0.5\n",
        "'inner_lr' applies to",
    ),
    ("unknown-algorithm", "algorithm: mamI\n", "'algorithm' must be one of"),
    ("algorithm-null", "algorithm: ~\n", "'algorithm' must not be empty"),
    ("benchmark-unknown", "benchmark: mnist\n", "'benchmark' must be one of sine, omniglot, folder, csv"),
    ("split-unknown", "benchmark: omniglot\ndata_dir: x\nsplit: foo\n", "'split' must be one of"),
    ("channels-two", "channels: 2\n", "'channels' must be one of 1, 3"),
    ("kernels-unknown", "kernels: fast\n", "'kernels' must be one of auto, off"),
    ("optimizer-unknown", "outer_optimizer: rmsprop\n", "'outer_optimizer' must be one of adam, sgd"),
    ("schedule-unknown", "lr_schedule: linear\n", "'lr_schedule' must be one of"),
    ("device-unknown", "device: tpu\n", "tpu"),
    ("device-absent", "device: cuda:99\n", "cuda:99"),
    ("precision-unknown", "precision: fp8\n", "'precision' must be one of"),
    ("fp16-on-the-cpu", "precision: fp16\ndevice: cpu\n", "fp16"),
    ("binary-file", b"\xff\xfe\x00\x01garbage\x80\x81", "c.yaml"),
    ("deeply-nested", "hidden: " + "[" * 600 + "]" * 600 + "\n", "c.yaml"),
    ("python-tag", "shots: !!python/object/apply:os.system ['true']\n", "is not valid YAML"),
    (
        "alias-bomb",
        "a: &a [1, 1, 1, 1, 1, 1, 1, 1]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\n"
        "c: &c [*b, *b, *b, *b, *b, *b, *b, *b]\nhidden: [*c, *c, *c, *c, *c, *c, *c, *c]\n",
        "'hidden' must be a list of integers",
    ),
    ("null-key", "~: 3\n", "unknown config key 'None'"),
    ("integer-key", "1: 2\n", "unknown config key '1'"),
    ("plugin-file-missing", "plugins: [nope.py]\n", "plugin file not found: nope.py"),
    (
        "plugin-module-missing",
        "plugins: [no_such_module_xyz]\n",
        "plugin module 'no_such_module_xyz' cannot be imported",
    ),
    ("classifier-on-sine", "algorithm: protonet\n", "is a few-shot classifier"),
    (
        "test-ways-for-a-fixed-head",
        "benchmark: folder\ndata_dir: x\nways: 5\ntest_ways: 3\n",
        "'test_ways' (3) must equal 'ways' (5)",
    ),
    (
        "omniglot-too-many-shots",
        "benchmark: omniglot\ndata_dir: x\nalgorithm: protonet\nshots: 15\nqueries: 15\n",
        "exceed the 20 examples",
    ),
    (
        "omniglot-too-many-ways",
        "benchmark: omniglot\ndata_dir: x\nalgorithm: protonet\nways: 5000\n",
        "exceeds the",
    ),
    (
        "omniglot-rgb",
        "benchmark: omniglot\ndata_dir: x\nalgorithm: protonet\nchannels: 3\n",
        "needs 'channels' 1",
    ),
    ("csv-key-on-sine", "csv_label: species\n", "apply to the csv benchmark only"),
    ("val-classes-on-sine", "val_classes: 3\n", "apply to the folder and csv benchmarks"),
    (
        "csv-label-and-target",
        "benchmark: csv\ndata_dir: x.csv\ncsv_label: a\ncsv_target: b\n",
        "needs either 'csv_label'",
    ),
    ("csv-without-columns", "benchmark: csv\ndata_dir: x.csv\n", "needs either 'csv_label'"),
    ("omniglot-without-data-dir", "benchmark: omniglot\nalgorithm: protonet\n", "needs data_dir"),
    (
        "test-classes-zero",
        "benchmark: folder\ndata_dir: x\nalgorithm: protonet\ntest_classes: 0\n",
        "'test_classes' (0) must be at least",
    ),
    (
        "eval-steps-without-inner-loop",
        "benchmark: folder\ndata_dir: x\nalgorithm: protonet\neval_steps: [1]\n",
        "applies to learners with an inner loop",
    ),
    ("inner-steps-too-many", "inner_steps: 100000\n", "inner_steps"),
    ("inner-lr-a-word", "inner_lr: fast\n", "'inner_lr' must be a number"),
    ("first-order-maybe", "first_order: maybe\n", "'first_order' must be true or false"),
    (
        "classification-one-way",
        "benchmark: folder\ndata_dir: x\nalgorithm: protonet\nways: 1\n",
        "'ways' must be >= 2 for classification",
    ),
):
    case(CF, name, CONF, match, yaml_file(text))
case(CF, "a-directory", ["train", "--config", "{tmp}", *TAIL], "is a directory")
case(CF, "missing", ["train", "--config", "{tmp}/nope.yaml", *TAIL], "config file not found")
case(
    CF,
    "plugin-raising",
    CONF,
    "plugin",
    lambda env: (
        write(env.tmp / "p.py", "raise RuntimeError('plugin broke')\n"),
        write(env.tmp / "c.yaml", f"plugins: [{env.tmp}/p.py]\n"),
    ),
)
case(
    CF,
    "plugin-syntax-error",
    CONF,
    "plugin",
    lambda env: (
        write(env.tmp / "q.py", "def (:\n"),
        write(env.tmp / "c.yaml", f"plugins: [{env.tmp}/q.py]\n"),
    ),
)
case(CF, "plugin-flag-missing", ["train", "--plugins", "{tmp}/nope.py", *TAIL], "plugin file not found")
SET = ["train", *TAIL, "--set"]
for name, text, match in (
    ("no-equals", "shots", "an override must look like key=value"),
    ("no-key", "=3", "unknown config key ''"),
    ("empty-value", "shots=", "'shots' must not be empty"),
    ("a-list-for-a-number", "shots=[1,2]", "'shots' must be an integer"),
    ("unknown-key", "inner_lrr=0.1", "unknown config key 'inner_lrr' (did you mean 'inner_lr'?)"),
    ("exponent-for-an-integer", "ways=1e3", "'ways' must be an integer"),
    ("unclosed-bracket", "hidden=[40,", "'hidden' must be a list of integers"),
    ("a-mapping", "shots={{a: 1}}", "'shots' must be an integer"),
):
    case(CF, f"set-{name}", [*SET, text], match)
for name, flags, match in (
    ("ways-a-word", ["--ways", "x"], "'ways' must be an integer, got 'x'"),
    ("hidden-a-word", ["--hidden", "40", "x"], "'hidden' must be a list of integers"),
    ("eval-steps-negative", ["--eval-steps", "-1"], "'eval_steps' must hold steps >= 0"),
    ("shots-a-float", ["--shots", "1.5"], "'shots' must be an integer, got 1.5"),
    ("outer-lr-a-word", ["--outer-lr", "abc"], "'outer_lr' must be a number"),
    ("device-unknown", ["--device", "foo"], "foo"),
    ("fp16-on-the-cpu", ["--precision", "fp16", "--device", "cpu"], "fp16"),
    ("iterations-a-list", ["--iterations", "[1, 2]"], "'iterations' must be an integer"),
    (
        "image-size-huge",
        ["--benchmark", "folder", "--data-dir", "x", "--algorithm", "protonet", "--image-size", "100000"],
        "more than this machine's",
    ),
):
    case(CF, f"flag-{name}", ["train", *TAIL, *flags], match)

# ------------------------------------------------------------------------------------ flags of every command

FL = "flags"
for name, argv, match in (
    ("unknown-command", ["bogus"], "invalid choice: 'bogus'"),
    ("unknown-top-flag", ["--bogus"], "unrecognized arguments: --bogus"),
    ("train-unknown-flag", ["train", "--bogus"], "unrecognized arguments: --bogus"),
    ("train-missing-value", ["train", "--iterations"], "expected one argument"),
    ("train-nproc-a-word", ["train", "--nproc", "two"], "invalid int value: 'two'"),
    ("train-set-without-value", ["train", "--set"], "expected one argument"),
    ("eval-no-checkpoint", ["eval"], "the following arguments are required: checkpoint"),
    ("eval-tasks-a-word", ["eval", "{ckpt}", "--tasks", "many"], "invalid int value: 'many'"),
    ("eval-steps-empty", ["eval", "{ckpt}", "--steps"], "expected at least one argument"),
    ("plot-shots-a-float", ["plot", "{ckpt}", "--shots", "1.5"], "invalid int value: '1.5'"),
    ("sweep-no-set", ["sweep", "{run}/config.yaml"], "the following arguments are required: --set"),
    ("runs-two-roots", ["runs", "a", "b"], "unrecognized arguments: b"),
    ("report-no-runs", ["report"], "the following arguments are required: runs"),
    ("data-unknown-action", ["data", "upload", "omniglot", "--data-dir", "x"], "invalid choice: 'upload'"),
    ("data-unknown-dataset", ["data", "download", "mnist", "--data-dir", "x"], "invalid choice: 'mnist'"),
    (
        "data-no-data-dir",
        ["data", "download", "omniglot"],
        "the following arguments are required: --data-dir",
    ),
    ("info-unknown-flag", ["info", "--bogus"], "unrecognized arguments: --bogus"),
    ("info-extra-argument", ["info", "now"], "unrecognized arguments: now"),
    ("serve-port-a-word", ["serve", "{img}", "--port", "http"], "invalid int value: 'http'"),
    ("serve-ttl-a-word", ["serve", "{img}", "--episode-ttl", "long"], "invalid float value: 'long'"),
):
    case(FL, name, argv, match, usage=True)
for name, argv, match, *setup in (
    ("train-resume-without-run-dir", ["train", "--resume"], "--resume needs --run-dir"),
    (
        "train-resume-empty-folder",
        ["train", "--resume", "--run-dir", "{tmp}/e"],
        "config file not found",
        lambda env: (env.tmp / "e").mkdir(),
    ),
    (
        "train-resume-missing-folder",
        ["train", "--resume", "--run-dir", "{tmp}/nope"],
        "config file not found",
    ),
    (
        "train-run-dir-a-file",
        ["train", "--run-dir", "{tmp}/f", "--quiet", "--no-eval"],
        "not a folder",
        lambda env: write(env.tmp / "f", "x"),
    ),
    (
        "train-run-dir-under-a-file",
        ["train", "--run-dir", "{tmp}/f/run", "--quiet", "--no-eval"],
        "not a folder",
        lambda env: write(env.tmp / "f", "x"),
    ),
    ("eval-missing-checkpoint", ["eval", "{tmp}/missing.pt"], "checkpoint not found"),
    ("eval-tasks-zero", [*EVAL[:2], "--tasks", "0"], "--tasks must be >= 1, got 0"),
    ("eval-tasks-negative", [*EVAL[:2], "--tasks", "-1"], "--tasks must be >= 1, got -1"),
    ("eval-steps-negative", [*EVAL, "--steps", "-1"], "--steps must be between 0 and 10,000"),
    ("eval-steps-too-many", [*EVAL, "--steps", "1", "100001"], "--steps must be between 0 and 10,000"),
    ("eval-ways-one", ["eval", "{img}", "--ways", "1", "--tasks", "2"], "'test_ways' must be >= 2"),
    ("eval-ways-zero", [*EVAL, "--ways", "0"], "--ways must be >= 1"),
    ("eval-shots-zero", [*EVAL, "--shots", "0"], "--shots must be >= 1"),
    ("eval-queries-zero", [*EVAL, "--queries", "0"], "--queries must be >= 1"),
    ("eval-queries-negative", [*EVAL, "--queries", "-2"], "--queries must be >= 1"),
    ("eval-device-unknown", [*EVAL, "--device", "foo"], "foo"),
    ("eval-device-absent", [*EVAL, "--device", "cuda:99"], "cuda:99"),
    ("eval-json-a-directory", [*EVAL, "--json", "{tmp}"], "--json"),
    (
        "eval-json-under-a-file",
        [*EVAL, "--json", "{tmp}/f/r.json"],
        "is a file, not a folder",
        lambda env: write(env.tmp / "f", "x"),
    ),
    (
        "eval-steps-without-inner-loop",
        ["eval", "{img}", "--steps", "1", "--tasks", "2"],
        "--steps applies to learners with an inner loop",
    ),
    (
        "eval-ways-for-a-fixed-head",
        ["eval", "{maml_img}", "--ways", "3", "--tasks", "2"],
        "'test_ways' (3) must equal 'ways' (2)",
    ),
    (
        "eval-data-moved",
        ["eval", "{img}", "--data-dir", "{tmp}/moved", "--tasks", "2"],
        "image folder not found",
    ),
    (
        "eval-too-many-shots-for-the-data",
        ["eval", "{img}", "--shots", "50", "--tasks", "2"],
        "fewer than shots + queries",
    ),
    ("plot-missing", ["plot", "{tmp}/nope.pt"], "checkpoint not found"),
    ("plot-shots-zero", [*PLOT, "--shots", "0"], "--shots must be >= 1, got 0"),
    ("plot-shots-negative", [*PLOT, "--shots", "-3"], "--shots must be >= 1, got -3"),
    ("plot-steps-negative", [*PLOT, "--steps", "-1"], "--steps must be between 0 and 10,000"),
    ("plot-steps-too-many", [*PLOT, "--steps", "100001"], "--steps must be between 0 and 10,000"),
    ("plot-out-a-directory", ["plot", "{ckpt}", "--out", "{tmp}"], "--out"),
    ("plot-out-unknown-format", ["plot", "{ckpt}", "--out", "{tmp}/f.xyz"], "xyz"),
    (
        "plot-out-under-a-file",
        ["plot", "{ckpt}", "--out", "{tmp}/f/fig.png"],
        "--out",
        lambda env: write(env.tmp / "f", "x"),
    ),
    ("plot-device-unknown", [*PLOT, "--device", "foo"], "foo"),
    ("plot-seed-huge", [*PLOT, "--seed", "99999999999999999999999"], "--seed"),
    ("plot-seed-negative", [*PLOT, "--seed", "-99999999999"], "--seed"),
    ("sweep-missing-config", ["sweep", "{tmp}/nope.yaml", "--set", "shots=1,2"], "config file not found"),
    (
        "sweep-set-without-equals",
        ["sweep", "{run}/config.yaml", "--set", "shots"],
        "an override must look like key=value",
    ),
    ("sweep-unknown-key", ["sweep", "{run}/config.yaml", "--set", "zzz=1,2"], "unknown config key 'zzz'"),
    ("sweep-empty-value", ["sweep", "{run}/config.yaml", "--set", "shots=1,,2"], "empty value in the list"),
    (
        "sweep-words-for-integers",
        ["sweep", "{run}/config.yaml", "--set", "shots=a,b"],
        "'shots' must be an integer",
    ),
    ("sweep-zero-shots", ["sweep", "{run}/config.yaml", "--set", "shots=0,1"], "'shots' must be >= 1"),
    (
        "sweep-unknown-algorithm",
        ["sweep", "{run}/config.yaml", "--set", "algorithm=maml,nope"],
        "'algorithm' must be one of",
    ),
    (
        "sweep-runs-a-file",
        ["sweep", "{run}/config.yaml", "--set", "shots=1,2", "--runs", "{tmp}/f"],
        "not a folder",
        lambda env: write(env.tmp / "f", "x"),
    ),
    (
        "sweep-config-invalid",
        ["sweep", "{tmp}/c.yaml", "--set", "shots=1,2"],
        "is not valid YAML",
        lambda env: write(env.tmp / "c.yaml", "a: ["),
    ),
    ("runs-root-a-file", ["runs", "{tmp}/f"], "not a folder", lambda env: write(env.tmp / "f", "x")),
    ("runs-root-missing", ["runs", "{tmp}/nope"], "no such folder"),
    ("report-not-a-run-folder", ["report", "{tmp}", "--out", "{tmp}/rep"], "is not a run folder"),
    ("report-missing-folder", ["report", "{tmp}/nope", "--out", "{tmp}/rep"], "is not a run folder"),
    (
        "report-out-a-file",
        ["report", "{run}", "--out", "{tmp}/f"],
        "--out",
        lambda env: write(env.tmp / "f", "x"),
    ),
    ("report-device-unknown", ["report", "{run}", "--out", "{tmp}/rep", "--device", "foo"], "foo"),
    (
        "data-dir-a-file",
        ["data", "download", "omniglot", "--data-dir", "{tmp}/f"],
        "not a folder",
        lambda env: write(env.tmp / "f", "x"),
    ),
    ("serve-no-checkpoint", ["serve"], "metalab serve needs a checkpoint trained on images"),
    ("serve-port-too-high", ["serve", "{img}", "--port", "70000"], "--port must be in 0..65535, got 70000"),
    ("serve-port-negative", ["serve", "{img}", "--port", "-1"], "--port must be in 0..65535, got -1"),
    ("serve-max-episodes-zero", ["serve", "{img}", "--max-episodes", "0"], "--max-episodes must be >= 1"),
    ("serve-ttl-zero", ["serve", "{img}", "--episode-ttl", "0"], "--episode-ttl"),
    ("serve-ttl-negative", ["serve", "{img}", "--episode-ttl", "-5"], "--episode-ttl"),
    ("serve-ttl-nan", ["serve", "{img}", "--episode-ttl", "nan"], "--episode-ttl"),
    (
        "serve-corrupt-checkpoint",
        ["serve", "{tmp}/c.pt"],
        "is corrupt or truncated",
        lambda env: write(env.tmp / "c.pt", b"junk"),
    ),
):
    case(FL, name, argv, match, setup[0] if setup else None)

# ------------------------------------------------------------------------------------ run folders

RF = "run-folder"


def _metrics(edit):
    def setup(env: Env) -> None:
        path = env.run / "metrics.jsonl"
        lines = path.read_text().splitlines()
        edit(lines)
        path.write_text("\n".join(lines) + "\n")

    return setup


for name, argv, match, setup in (
    (
        "train-over-a-finished-run",
        ["train", "--config", "{run}/config.yaml", "--run-dir", "{run}", "--quiet", "--no-eval"],
        "exists: pass --resume",
        None,
    ),
    ("resume-another-config", [*RESUME, "--inner-lr", "0.5"], "config differs in inner_lr", None),
    ("resume-another-seed", [*RESUME, "--seed", "3"], "config differs in seed", None),
    (
        "resume-keep-best-corrupt-best-pt",
        [*RESUME, "--set", "keep_best=true"],
        "best.pt is corrupt or truncated (File is not a zip file); move it away to resume",
        lambda env: write(env.run / "best.pt", b"junk"),
    ),
    (
        "resume-schedule-against-the-past",
        [*RESUME, "--lr-schedule", "step", "--lr-decay-every", "1"],
        "config differs in lr_decay_every, lr_schedule (the new schedule's learning rate at iteration 1",
        None,
    ),
    (
        "resume-foreign-metrics-line",
        RESUME,
        "line 2 is not a metrics record",
        _metrics(lambda ls: ls.insert(1, "[1, 2]")),
    ),
    (
        "resume-metrics-line-without-iteration",
        RESUME,
        "line 1 is not a metrics record",
        _metrics(lambda ls: ls.insert(0, '{"loss": 1}')),
    ),
    (
        "resume-own-config-invalid",
        ["train", "--resume", "--run-dir", "{run}", "--quiet", "--no-eval"],
        "is not valid YAML",
        lambda env: write(env.run / "config.yaml", "shots: ["),
    ),
    (
        "resume-own-config-a-list",
        ["train", "--resume", "--run-dir", "{run}", "--quiet", "--no-eval"],
        "config.yaml is a YAML list, not a mapping",
        lambda env: write(env.run / "config.yaml", "- 1\n"),
    ),
    (
        "resume-own-config-missing",
        ["train", "--resume", "--run-dir", "{run}", "--quiet", "--no-eval"],
        "config file not found",
        lambda env: (env.run / "config.yaml").unlink(),
    ),
    (
        "resume-own-config-unknown-key",
        ["train", "--resume", "--run-dir", "{run}", "--quiet", "--no-eval"],
        "unknown config key 'zzz'",
        lambda env: write(env.run / "config.yaml", (env.run / "config.yaml").read_text() + "zzz: 1\n"),
    ),
    (
        "runs-config-invalid",
        ["runs", "{tmp}"],
        "config.yaml",
        lambda env: write(env.run / "config.yaml", "a: ["),
    ),
    (
        "runs-config-a-list",
        ["runs", "{tmp}"],
        "config.yaml",
        lambda env: write(env.run / "config.yaml", "- 1\n"),
    ),
    (
        "runs-metrics-bad-line",
        ["runs", "{tmp}"],
        "metrics.jsonl, line 1",
        _metrics(lambda ls: ls.insert(0, "{oops")),
    ),
    (
        "runs-metrics-without-iteration",
        ["runs", "{tmp}"],
        "metrics.jsonl, line",
        _metrics(lambda ls: ls.append('{"loss": 1.0}') or ls.append('{"iteration": 9}')),
    ),
    (
        "runs-results-corrupt",
        ["runs", "{tmp}"],
        "results.json",
        lambda env: write(env.run / "results.json", "{not json"),
    ),
    (
        "runs-results-wrong-shape",
        ["runs", "{tmp}"],
        "results.json",
        lambda env: write(env.run / "results.json", '{"test": 3}'),
    ),
    (
        "report-config-invalid",
        ["report", "{run}", "--out", "{tmp}/rep"],
        "config.yaml",
        lambda env: write(env.run / "config.yaml", "a: ["),
    ),
    (
        "report-metrics-bad-line",
        ["report", "{run}", "--out", "{tmp}/rep"],
        "metrics.jsonl, line 1",
        _metrics(lambda ls: ls.insert(0, "{oops")),
    ),
    (
        "report-results-corrupt",
        ["report", "{run}", "--out", "{tmp}/rep"],
        "results.json",
        lambda env: write(env.run / "results.json", "["),
    ),
    (
        "report-config-without-algorithm",
        ["report", "{run}", "--out", "{tmp}/rep"],
        "does not name the run's algorithm",
        lambda env: write(env.run / "config.yaml", "shots: 1\n"),
    ),
    (
        "report-results-wrong-shape",
        ["report", "{run}", "--out", "{tmp}/rep"],
        "results.json",
        lambda env: write(env.run / "results.json", '{"test": [{"metric": 1}]}'),
    ),
):
    case(RF, name, argv, match, setup)


# ------------------------------------------------------------------------------------ the model zoo

ZOO = "zoo"  # $METALAB_ZOO is {tmp}/zoo in every case (tests/test_bad_inputs.py)
# A figure record of {img} (2 iterations), as benchmarks/omniglot.py writes one.
ZOO_RECORD = dict(algorithm="protonet", ways=2, shots=1, accuracy=50.0, ci95=1.0, test_episodes=10)
ZOO_RECORD.update(test_queries=1, iterations=2)


def _zoo_model(then=None):
    """A setup putting {img} in the case's zoo as zoo:tiny, then `then(path of its zoo file)`."""

    def setup(env: Env) -> None:
        from metalab import zoo

        zoo.add(env.img.parent, [dict(ZOO_RECORD)], ["tiny"], root=env.tmp / "zoo")
        if then is not None:
            then(env.tmp / "zoo" / "tiny.pt")

    return setup


def _flip_middle(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def _zoo_results(**changes):
    return lambda env: write(env.tmp / "r.json", json.dumps({**ZOO_RECORD, **changes}))


ZOO_ADD = ["zoo", "add", "{tmp}/protonet", "--results", "{tmp}/r.json"]
for name, argv, match, setup in (
    (
        "eval-unknown-name-empty-zoo",
        ["eval", "zoo:protonet-omniglot-5w1s"],
        "{tmp}/zoo holds no models",
        None,
    ),
    (
        "predict-unknown-name-lists-known",
        ["predict", "zoo:tiny2", "--support", "{support}", "{queries}"],
        "unknown zoo model 'tiny2'; the zoo in {tmp}/zoo holds: tiny",
        _zoo_model(),
    ),
    (
        "eval-sha256-mismatch",
        ["eval", "zoo:tiny"],
        "the file is damaged or was replaced",
        _zoo_model(_flip_middle),
    ),
    (
        "serve-sha256-mismatch",
        ["serve", "zoo:tiny"],
        "the file is damaged or was replaced",
        _zoo_model(_flip_middle),
    ),
    (
        "predict-file-replaced",
        ["predict", "zoo:tiny", "--support", "{support}", "{queries}"],
        "the file is damaged or was replaced",
        _zoo_model(lambda p: p.write_bytes(p.read_bytes() + b"\0")),
    ),
    ("eval-file-missing", ["eval", "zoo:tiny"], "tiny.pt is missing", _zoo_model(lambda p: p.unlink())),
    (
        "plot-index-not-json",
        ["plot", "zoo:tiny"],
        "cannot be read",
        lambda env: write(env.tmp / "zoo/index.json", "{"),
    ),
    (
        "list-index-a-list",
        ["zoo"],
        "not a metalab zoo index",
        lambda env: write(env.tmp / "zoo/index.json", "[1]"),
    ),
    (
        "eval-index-file-outside-the-zoo",
        ["eval", "zoo:tiny"],
        "is not a file name in",
        lambda env: write(
            env.tmp / "zoo/index.json",
            '{"models": {"tiny": {"file": "../protonet/checkpoint.pt", "sha256": "0", "algorithm": "x"}}}',
        ),
    ),
    (
        "eval-index-entry-without-sha",
        ["eval", "zoo:tiny"],
        "'tiny' lacks sha256",
        lambda env: write(
            env.tmp / "zoo/index.json", '{"models": {"tiny": {"file": "tiny.pt", "algorithm": "x"}}}'
        ),
    ),
    (
        "add-large-file-not-a-checkpoint",  # oversize checkpoints: tests/test_zoo.py
        ["zoo", "add", "{tmp}/big", "--results", "{tmp}/r.json"],
        "checkpoint.pt is corrupt or truncated",
        lambda env: _zoo_results()(env) and write(env.tmp / "big" / "checkpoint.pt", b"\0" * (2 * 2**20 + 1)),
    ),
    ("add-run-without-results", ["zoo", "add", "{tmp}/protonet"], "has no results.json", None),
    (
        "add-run-results-weights-malformed",  # keep_best's {"file": "best.pt", "iteration": N}
        ["zoo", "add", "{tmp}/protonet"],
        "results.json is not a results record",
        lambda env: write(
            env.tmp / "protonet" / "results.json",
            json.dumps(
                dict(algorithm="protonet", ways=2, shots=1, iterations=2, weights="best.pt")
                | {"test": [{"metric": "accuracy", "mean": 0.5, "ci95": 0.1, "tasks": 10}]}
            ),
        ),
    ),
    (
        "add-best-weights-of-unfinished-run",
        ZOO_ADD,
        "its figure is of best.pt's weights",
        _zoo_results(best_iteration=1, planned_iterations=4),
    ),
    ("add-best-weights-missing", ZOO_ADD, "best.pt", _zoo_results(best_iteration=2)),
    ("add-results-not-found", ZOO_ADD, "results file not found", None),
    ("add-results-not-json", ZOO_ADD, "cannot be read as JSON", lambda env: write(env.tmp / "r.json", "{")),
    (
        "add-results-without-figure",
        ZOO_ADD,
        "lacks algorithm, ways, shots, accuracy",
        lambda env: write(env.tmp / "r.json", "{}"),
    ),
    ("add-stale-results", ZOO_ADD, "meta-test the checkpoint again", _zoo_results(iterations=1)),
    ("add-other-algorithm", ZOO_ADD, "the record is of maml", _zoo_results(algorithm="maml")),
    ("add-bad-name", [*ZOO_ADD, "--name", "Tiny Model"], "must be lower-case", _zoo_results()),
    (
        "add-two-names-one-record",
        [*ZOO_ADD, "--name", "a", "b"],
        "one distinct name per record",
        _zoo_results(),
    ),
    (
        "add-no-checkpoint",
        ["zoo", "add", "{tmp}", "--results", "{tmp}/r.json"],
        "checkpoint not found",
        _zoo_results(),
    ),
    (
        "add-corrupt-checkpoint",
        ZOO_ADD,
        "is corrupt or truncated",
        lambda env: _zoo_results()(env) and env.img.write_bytes(env.img.read_bytes()[:500]),
    ),
):
    case(ZOO, name, argv, match, setup)


def summary(outcomes: dict[str, str] | None = None) -> str:
    """ "bad-input corpus: N cases (by category: ...)", and of them, what this pytest run ran:
    `outcomes` maps a case id to "passed", "failed" or "skipped"."""
    counts: dict[str, int] = {}
    for c in CASES:
        counts[c.category] = counts.get(c.category, 0) + 1
    line = f"bad-input corpus: {len(CASES)} cases (by category: "
    line += ", ".join(f"{name} {n}" for name, n in counts.items()) + ")"
    if outcomes:
        tally: dict[str, int] = {}
        for outcome in outcomes.values():
            tally[outcome] = tally.get(outcome, 0) + 1
        line += f"; this pytest run ran {len(outcomes)}: " + ", ".join(f"{n} {o}" for o, n in tally.items())
    return line
