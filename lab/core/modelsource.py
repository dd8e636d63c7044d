"""Model sources: the run's own model, a model folder, or a hub name, resolved to a local folder.

Every parameter that names a model (`pretrain.init_from`, `distill.teacher`, `longify.source`)
goes through `resolve`: a folder is used as it is; a hub name is looked up in the
Hugging Face cache first (`HF_HOME`; nothing leaves the machine when it is there) and downloaded
only when it is not and a hub is reachable. Downstream code only ever sees a folder.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from lab.core.errors import LabError
from lab.core.files import digest_path

HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # `bert-base-chinese`, `hfl/rbt3`
PROBE_TEXT = "北京是中国的首都。"  # a Chinese model's tokenizer reads it as known tokens
WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
           "pytorch_model.bin.index.json")  # fmt: skip


class ModelSourceError(LabError, ValueError):
    """A parameter names a model that cannot be found or read; the message names it and the fix."""


@dataclass(frozen=True)
class ModelSource:
    spec: str  # what the parameter said; empty: the run's own model
    folder: Path  # a local folder with config.json (and weights, unless resolved without them)
    origin: str  # "run" | "folder" | "hub"
    revision: str = ""  # a hub snapshot's commit

    @property
    def label(self) -> str:
        """A short name: the hub name, or the folder's name."""
        return self.spec if self.origin == "hub" else self.folder.name

    def digest(self) -> str:
        """What a stage's cache key records: a folder's content, a hub name at its revision."""
        return (
            f"hub:{self.spec}@{self.revision}" if self.origin == "hub" else digest_path(self.folder)
        )

    def provenance(self) -> str:
        """Where the model came from, for a model card (no machine-specific path)."""
        if self.origin == "hub":
            return f"hub model `{self.spec}` (revision {self.revision or 'unknown'})"
        if self.origin == "run":
            return "this run's pretrained model"
        return f"model folder `{self.folder.name}` (content sha256 {self.digest()[:12]})"


def resolve(spec: str, own: Path | None = None, *, param: str, weights: bool = True) -> ModelSource:
    """The model `spec` names: empty for the run's own model (`own`), a folder, or a hub name.
    `param` names the parameter in every error; `weights=False` (a dry run, a cache key) fetches a
    hub model's config and tokenizer only (a folder's weights are always looked for)."""
    if not spec:
        if own is None or not (Path(own) / "config.json").is_file():
            raise ModelSourceError(
                f"{param} is empty (this run's model) but there is none at {own}: run the stage "
                f"that makes it first, or name a model folder or hub name in {param}"
            )
        return ModelSource("", Path(own), "run")
    path = Path(spec).expanduser()
    if path.exists() or spec.startswith((".", "/", "~")):
        return ModelSource(spec, _checked(path, param), "folder")
    if not HUB_NAME.match(spec):
        raise ModelSourceError(f"{param} = {spec!r}: neither a model folder nor a hub name")
    folder, revision = _hub_snapshot(spec, param, weights)
    return ModelSource(spec, _checked(folder, param, weights), "hub", revision)


def _checked(folder: Path, param: str, weights: bool = True) -> Path:
    if not folder.is_dir():
        raise ModelSourceError(f"{param} = {str(folder)!r}: no such folder")
    if not (folder / "config.json").is_file():
        raise ModelSourceError(
            f"{param} = {str(folder)!r} is not a model folder (no config.json): give the folder "
            "that save_pretrained wrote"
        )
    if weights and not any((folder / w).is_file() for w in WEIGHTS):
        raise ModelSourceError(
            f"{param} = {str(folder)!r} has a config.json but no weights ({', '.join(WEIGHTS[:2])})"
        )
    return folder.resolve()


def _hub_snapshot(name: str, param: str, weights: bool) -> tuple[Path, str]:
    """A hub model's snapshot folder and commit: from the local hub cache, or downloaded. Weights
    come as safetensors, or as a PyTorch .bin where the model has no safetensors."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError, RepositoryNotFoundError

    patterns = ["*.json", "*.txt", "*.model"] + (["*.safetensors"] if weights else [])

    def fetch(local: bool, allow: list[str]) -> Path:
        return Path(snapshot_download(name, local_files_only=local, allow_patterns=allow,
                                      cache_dir=_hub_cache(), etag_timeout=10))  # fmt: skip

    try:
        folder = fetch(True, patterns)
    except ValueError as err:  # HFValidationError: not a valid repository id
        raise ModelSourceError(f"{param} = {name!r}: not a valid hub name ({err})") from None
    except (LocalEntryNotFoundError, OSError):
        if _offline():
            raise ModelSourceError(
                f"{param} = {name!r}: not in the hub cache ({_hub_cache()}) and the hub is switched off "
                "(HF_HUB_OFFLINE); fetch it where a hub is reachable, or give a model folder"
            ) from None
        try:
            folder = fetch(False, patterns)
        except RepositoryNotFoundError:
            raise ModelSourceError(f"{param} = {name!r}: no such model on the hub") from None
        except Exception as err:  # network: refused, timed out, proxy, ...
            raise ModelSourceError(
                f"{param} = {name!r}: not in the hub cache ({_hub_cache()}) and the hub cannot be "
                f"reached ({type(err).__name__}); give a model folder, or fetch it where a hub is "
                "reachable"
            ) from None
    if weights and not any((folder / w).is_file() for w in WEIGHTS):
        folder = fetch(_offline(), [*patterns, "*.bin"])
    return folder, folder.name


def _offline() -> bool:
    from huggingface_hub import constants

    flags = (os.environ.get(k, "").upper() for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return bool(constants.HF_HUB_OFFLINE) or any(f in ("1", "ON", "YES", "TRUE") for f in flags)


def _hub_cache() -> str:
    """The hub cache as the environment names it now (HF_HUB_CACHE, or HF_HOME/hub)."""
    if cache := os.environ.get("HF_HUB_CACHE"):
        return cache
    home = os.environ.get("HF_HOME") or os.path.join(
        os.path.expanduser("~"), ".cache", "huggingface"
    )
    return os.path.join(home, "hub")


def check_masked_lm(folder: Path, spec: str, *, param: str) -> None:
    """A masked LM with a tokenizer beside it that reads Chinese, or a ModelSourceError naming
    `param`, the problem and the fix."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    from lab.core import vocab

    conf = AutoConfig.from_pretrained(str(folder))
    if conf.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES:
        raise ModelSourceError(
            f"{param}: {spec!r} is a {conf.model_type} model, which transformers has no masked LM for"
        )
    heads = [a for a in conf.architectures or [] if a.endswith(("ForMaskedLM", "ForPreTraining"))]
    if conf.architectures and not heads:
        raise ModelSourceError(
            f"{param}: {spec!r} was saved as {', '.join(conf.architectures)}, an encoder without its "
            "masked-LM head; save the checkpoint's *ForMaskedLM model (the lab fine-tunes from it and "
            "scores its LM)"
        )
    if not any((folder / f).is_file() for f in vocab.TOKENIZER_FILES[:2]):  # a vocabulary
        raise ModelSourceError(
            f"{param}: {spec!r} has no tokenizer in {folder}; save the model's tokenizer beside it "
            "(tokenizer.save_pretrained)"
        )
    try:
        tok = vocab.load(folder)
    except (OSError, ValueError) as err:
        raise ModelSourceError(
            f"{param}: {spec!r} has no tokenizer the lab can load ({err}); save it beside the model"
        ) from None
    ids = tok(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    if not ids or all(i == tok.unk_token_id for i in ids):
        raise ModelSourceError(
            f"{param}: {spec!r}'s tokenizer reads {PROBE_TEXT!r} as unknown tokens only: not a Chinese model"
        )
    if tok.mask_token_id is None or tok.cls_token_id is None or tok.sep_token_id is None:
        raise ModelSourceError(
            f"{param}: {spec!r}'s tokenizer has no mask, CLS or SEP token; set them and save it again"
        )
