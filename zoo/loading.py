"""Load the base model and validated LoRA adapters of the zoo.

The base comes through the real `from_pretrained` path (local folder or Hub id; `HF_HUB_OFFLINE`
is honoured by huggingface_hub itself). An adapter comes from its registry entry: the local folder
`<zoo>/adapters/<id>/` or, for Hub-only entries, `huggingface_hub.snapshot_download`. Weights are
read only from `adapter_model.safetensors` (never pickle) and checked before they touch a model:
config fields, peft type, checksum, tensor names and shapes against the base, and the tokenizer
vocabulary. Every problem is an `AdapterLoadError` naming the adapter.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from zoo.registry import Registry, RegistryError, file_checksum

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"
# Files fetched for a Hub adapter: weights, config and tokenizer; never pickles or code.
HUB_PATTERNS = ["*.safetensors", "*.json", "*.txt", "*.md"]
_PREFIX = "base_model.model."


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when present, else 'cpu'; asking for CUDA without one is a clear error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available (use 'auto' or 'cpu')")
    return device


class AdapterLoadError(ValueError):
    """An adapter that cannot be loaded; the message names the adapter id and the problem."""


@dataclass
class LoadedAdapter:
    """A validated adapter, not yet attached to a model."""

    id: str
    folder: Path
    config: object  # peft.LoraConfig
    state: dict[str, torch.Tensor]  # peft file keys: base_model.model.<module>.lora_{A,B}.weight


def load_base(base_id: str, revision: str | None = None, device: str = "cpu"):
    """Load the base causal LM (eval mode) and its tokenizer; never runs remote code."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        base_id, revision=revision, trust_remote_code=False
    )
    tokenizer = AutoTokenizer.from_pretrained(base_id, revision=revision, trust_remote_code=False)
    return model.to(device).eval(), tokenizer


def adapter_folder(registry: Registry, entry_id: str) -> Path:
    """The local folder of an entry's adapter, downloading a Hub-only entry into the HF cache."""
    try:
        entry = registry.get(entry_id)
    except KeyError as e:
        raise AdapterLoadError(f"adapter {entry_id!r}: not in the registry {registry.path}") from e
    if entry.adapter_path is not None:
        try:
            folder = registry.adapter_dir(entry_id)
        except RegistryError as e:
            raise AdapterLoadError(f"adapter {entry_id!r}: {e}") from e
    else:
        from huggingface_hub import snapshot_download

        try:
            folder = Path(
                snapshot_download(
                    entry.hub_repo, revision=entry.hub_revision, allow_patterns=HUB_PATTERNS
                )
            )
        except Exception as e:  # offline cache miss, 404, auth...: one clear message
            raise AdapterLoadError(
                f"adapter {entry_id!r}: could not fetch {entry.hub_repo}"
                f"@{entry.hub_revision or 'main'} from the Hub ({type(e).__name__}: {e})"
            ) from e
    if not folder.is_dir():
        raise AdapterLoadError(f"adapter {entry_id!r}: folder {folder} does not exist")
    return folder


def read_adapter_config(entry_id: str, folder: Path):
    """Parse `adapter_config.json` into a `LoraConfig`, refusing unknown fields and other types."""
    from peft import LoraConfig

    path = folder / CONFIG_NAME
    if not path.is_file():
        raise AdapterLoadError(f"adapter {entry_id!r}: {path} is missing")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterLoadError(f"adapter {entry_id!r}: {path} is not valid JSON ({e})") from e
    if not isinstance(raw, dict):
        raise AdapterLoadError(f"adapter {entry_id!r}: {path} must hold a JSON object")
    if raw.get("peft_type") != "LORA":
        raise AdapterLoadError(
            f"adapter {entry_id!r}: peft_type is {raw.get('peft_type')!r}; only LORA is supported"
        )
    known = {f.name for f in dataclasses.fields(LoraConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise AdapterLoadError(
            f"adapter {entry_id!r}: {CONFIG_NAME} has unknown fields {unknown} "
            "(written by another peft version?)"
        )
    for flag in ("use_dora", "use_qalora", "use_bdlora"):
        if raw.get(flag):
            raise AdapterLoadError(f"adapter {entry_id!r}: {flag} adapters cannot be blended")
    if raw.get("modules_to_save") or raw.get("trainable_token_indices"):
        raise AdapterLoadError(
            f"adapter {entry_id!r}: modules_to_save / trainable tokens are not plain LoRA"
        )
    fields = {k: v for k, v in raw.items() if k not in ("peft_type", "peft_version")}
    fields.update(task_type="CAUSAL_LM", inference_mode=True)
    try:
        return LoraConfig(**fields)
    except (TypeError, ValueError) as e:
        raise AdapterLoadError(f"adapter {entry_id!r}: invalid {CONFIG_NAME} ({e})") from e


def read_adapter_weights(entry_id: str, folder: Path, checksum: str | None) -> dict:
    """Tensors of `adapter_model.safetensors` after the checksum check; pickles are refused."""
    from safetensors.torch import load_file

    path = folder / WEIGHTS_NAME
    if not path.is_file():
        pickles = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt")]
        hint = f" (found {pickles}; pickle weights are refused)" if pickles else ""
        raise AdapterLoadError(f"adapter {entry_id!r}: {path} is missing{hint}")
    if checksum is not None:
        actual = file_checksum(path)
        if actual != checksum:
            raise AdapterLoadError(
                f"adapter {entry_id!r}: checksum mismatch for {path}: registry says {checksum}, "
                f"file is {actual}"
            )
    try:
        state = load_file(str(path))
    except Exception as e:  # SafetensorError, OSError, ...: the file is damaged
        raise AdapterLoadError(
            f"adapter {entry_id!r}: {path} is not a readable safetensors file ({e})"
        ) from e
    if not state:
        raise AdapterLoadError(f"adapter {entry_id!r}: {path} holds no tensors")
    for key, tensor in state.items():
        if not torch.isfinite(tensor).all():
            raise AdapterLoadError(f"adapter {entry_id!r}: tensor {key} holds NaN or inf")
    return state


def _module_dims(module: nn.Module) -> tuple[int, int] | None:
    """(in, out) features of a Linear or GPT-2 Conv1D base layer (unwrapping a LoRA layer)."""
    if hasattr(module, "get_base_layer"):
        module = module.get_base_layer()
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    weight = getattr(module, "weight", None)
    if type(module).__name__ == "Conv1D" and weight is not None:
        return weight.shape[0], weight.shape[1]
    return None


def check_fits_base(adapter: LoadedAdapter, base_model: nn.Module, base_id: str) -> None:
    """Every tensor must target a layer of the base with matching shapes; r must be consistent."""
    aid, config = adapter.id, adapter.config
    declared = getattr(config, "base_model_name_or_path", None)
    if declared and declared != base_id:
        logger.warning(
            "adapter %r was trained on %r but the zoo base is %r; shapes fit, loading anyway",
            aid,
            declared,
            base_id,
        )
    for key, tensor in adapter.state.items():
        if not key.startswith(_PREFIX) or not key.endswith((".lora_A.weight", ".lora_B.weight")):
            raise AdapterLoadError(f"adapter {aid!r}: unexpected tensor {key!r} (not plain LoRA)")
        path, part = key[len(_PREFIX) :].rsplit(".lora_", 1)
        try:
            dims = _module_dims(base_model.get_submodule(path))
        except AttributeError:
            dims = None
        if dims is None:
            raise AdapterLoadError(
                f"adapter {aid!r}: targets {path!r}, which is not a linear layer of base {base_id}"
            )
        fan_in, fan_out = dims
        rank = tensor.shape[0] if part.startswith("A") else tensor.shape[-1]
        want = (rank, fan_in) if part.startswith("A") else (fan_out, rank)
        if tuple(tensor.shape) != want:
            raise AdapterLoadError(
                f"adapter {aid!r} does not fit base {base_id}: {key} has shape "
                f"{tuple(tensor.shape)}, the base layer needs {want} (trained on another base?)"
            )


def check_vocab(adapter_id: str, folder: Path, tokenizer) -> None:
    """If the adapter ships a tokenizer, its vocabulary must be the base's."""
    path = folder / "tokenizer.json"
    if not path.is_file():
        return
    from tokenizers import Tokenizer

    try:
        vocab = Tokenizer.from_file(str(path)).get_vocab(with_added_tokens=True)
    except Exception as e:
        raise AdapterLoadError(f"adapter {adapter_id!r}: unreadable {path} ({e})") from e
    base_vocab = tokenizer.get_vocab()
    if vocab != base_vocab:
        raise AdapterLoadError(
            f"adapter {adapter_id!r}: its tokenizer vocabulary ({len(vocab)} tokens) differs from "
            f"the base's ({len(base_vocab)} tokens); it was trained for another base model"
        )


def load_adapter(
    registry: Registry, entry_id: str, base_model: nn.Module, tokenizer, base_id: str
) -> LoadedAdapter:
    """Fetch, read and validate one adapter of the registry against the loaded base."""
    entry_checksum = registry.get(entry_id).checksum if entry_id in registry else None
    folder = adapter_folder(registry, entry_id)
    config = read_adapter_config(entry_id, folder)
    state = read_adapter_weights(entry_id, folder, entry_checksum)
    adapter = LoadedAdapter(id=entry_id, folder=folder, config=config, state=state)
    check_fits_base(adapter, base_model, base_id)
    check_vocab(entry_id, folder, tokenizer)
    return adapter
