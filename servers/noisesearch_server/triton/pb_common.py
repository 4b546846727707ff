"""What every Python-backend model in deploy/triton/ shares, inside Triton's stub: reading the config's
parameters and a request's tensors into the plain types the network code takes, answering with tensors, and
refusing to load when the declared parameters describe another model. Importable only inside the stub
(triton_python_backend_utils exists nowhere else)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence

import numpy as np
import triton_python_backend_utils as pb_utils

from ..backend import RowCondition, Rows
from . import contract
from .repository import Signature


def parameters(args: dict) -> dict[str, str]:
    config = json.loads(args["model_config"])
    return {name: value["string_value"] for name, value in config.get("parameters", {}).items()}


def device_name(args: dict) -> str:
    """The device Triton gave this instance: its instance group's kind, and its GPU index for KIND_GPU."""
    return f"cuda:{args['model_instance_device_id']}" if args.get("model_instance_kind") == "GPU" else "cpu"


def tensor(request, name: str) -> np.ndarray | None:
    found = pb_utils.get_input_tensor_by_name(request, name)
    return None if found is None else found.as_numpy()


def _strings(request, name: str, count: int) -> list[str] | None:
    values = tensor(request, name)
    if values is None:
        return None
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values.reshape(count)]


def rows(request, count: int) -> Rows:
    """The conditions of a request's rows, as the engine built them before sending (docs/triton.md)."""
    labels = tensor(request, contract.CLASS_LABEL)
    guidance = tensor(request, contract.GUIDANCE)
    prompts = _strings(request, contract.PROMPT, count)
    negatives = _strings(request, contract.NEGATIVE_PROMPT, count)
    conditions = []
    for i in range(count):
        label = None if labels is None or int(labels.reshape(count)[i]) < 0 else int(labels.reshape(count)[i])
        conditions.append(
            RowCondition(
                class_label=label,
                prompt=None if prompts is None else prompts[i],
                negative_prompt="" if negatives is None else negatives[i],
                guidance=0.0 if guidance is None else float(guidance.reshape(count)[i]),
            )
        )
    return Rows(conditions)


def answer(outputs: dict[str, np.ndarray]):
    return pb_utils.InferenceResponse(
        output_tensors=[pb_utils.Tensor(name, np.ascontiguousarray(value)) for name, value in outputs.items()]
    )


def failed(error: Exception):
    """One request's failure: Triton returns it to that request alone, as INTERNAL with this message."""
    return pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(f"{type(error).__name__}: {error}"))


def each(requests: Sequence, compute: Callable[[object], dict[str, np.ndarray]]) -> list:
    """One response per request; a request whose computation raises fails alone."""
    responses = []
    for request in requests:
        try:
            responses.append(answer(compute(request)))
        except Exception as error:  # noqa: BLE001 (any failure of the network code is that request's INTERNAL)
            responses.append(failed(error))
    return responses


def refuse_disagreement(what: str, declared: dict[str, str], actual: dict[str, str]) -> None:
    """Loading fails (the model is not ready) when config.pbtxt describes another model than the weights give."""
    wrong = contract.disagreements(declared, actual)
    if wrong:
        raise ValueError(
            f"{what}: config.pbtxt parameters disagree with the loaded model ({'; '.join(wrong)}); set them to the "
            f"values after the arrows"
        )


def declared_tensors(config: dict, key: str) -> dict[str, tuple[str, tuple[int, ...]]]:
    """config.pbtxt's inputs or outputs (`key`): name -> (data type, dims after the batch)."""
    return {t["name"]: (t["data_type"], tuple(int(d) for d in t.get("dims", []))) for t in config.get(key, [])}


def refuse_other_signature(what: str, args: dict, signature: Signature) -> None:
    """Loading fails when config.pbtxt's inputs and outputs are not the ones this network takes and gives, so a
    mis-shaped configuration is a model that is not ready, naming the right tensors, not a failure per request."""
    config = json.loads(args["model_config"])
    wrong = []
    for key, tensors in zip(("input", "output"), signature, strict=True):
        declared = declared_tensors(config, key)
        needed = {t.name: (t.data_type, t.dims) for t in tensors}
        for name, (data_type, dims) in needed.items():
            if declared.get(name) != (data_type, dims):
                has = "absent" if name not in declared else f"{declared[name][0]} {list(declared[name][1])}"
                wrong.append(f"{key} {name}: {has} -> {data_type} {list(dims)}")
        wrong += [f"{key} {name}: not taken by this network" for name in declared if name not in needed]
    if wrong:
        raise ValueError(f"{what}: config.pbtxt tensors disagree with the loaded model ({'; '.join(wrong)})")
