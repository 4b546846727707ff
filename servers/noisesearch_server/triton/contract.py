"""What a Triton model and the noisesearch server agree on (docs/triton.md): tensor names, and the `parameters`
of a model's config.pbtxt that carry what Triton's metadata cannot (the sampler's description of a denoiser, a
verifier's kind). Imported on both sides: by the server, and by the Python-backend models inside Triton's stub,
whose environment has numpy 1 and no gRPC, so nothing here imports more than the plain backend types."""

from __future__ import annotations

from ..backend import ModelSpec, VerifierSpec

# Denoiser tensors.
X, SIGMA, CLASS_LABEL, GUIDANCE, PROMPT, NEGATIVE_PROMPT, X0 = (
    "x", "sigma", "class_label", "guidance", "prompt", "negative_prompt", "x0",
)
# Decoder tensors.
LATENTS, IMAGES = "latents", "images"
# Verifier tensors.
SAMPLES, PROBES, SCORE = "samples", "probes", "score"

DECODER = "decoder"

_MODEL_FLOATS = ("sigma_min", "sigma_max", "rho", "default_guidance_scale", "schedule_shift")
_MODEL_INTS = ("num_classes", "default_steps")
_MODEL_STRINGS = ("default_solver", "process", "schedule", "identity")
MODEL_PARAMETERS = (*_MODEL_FLOATS, *_MODEL_INTS, *_MODEL_STRINGS)
VERIFIER_PARAMETERS = ("kind", "needs_condition", "xpred_sigma", "condition_kind", "description")


def model_parameters(spec: ModelSpec) -> dict[str, str]:
    """The denoiser's parameters as config.pbtxt carries them; floats in repr form, so they round-trip exactly."""
    values = {name: getattr(spec, name) for name in MODEL_PARAMETERS}
    return {name: repr(float(v)) if name in _MODEL_FLOATS else str(v) for name, v in values.items()}


def verifier_parameters(spec: VerifierSpec) -> dict[str, str]:
    return {
        "kind": spec.kind,
        "needs_condition": "true" if spec.needs_condition else "false",
        "xpred_sigma": repr(float(spec.xpred_sigma)),
        "condition_kind": spec.condition_kind,
        "description": spec.description,
    }


def _missing(parameters: dict[str, str], names: tuple[str, ...], what: str) -> None:
    missing = [name for name in names if name not in parameters]
    if missing:
        raise ValueError(f"{what}: config.pbtxt lacks parameters {', '.join(missing)} (docs/triton.md lists them)")


def _number(parameters: dict[str, str], name: str, kind: type, what: str):
    try:
        return kind(parameters[name])
    except ValueError:
        raise ValueError(f"{what}: parameter {name} is {parameters[name]!r}; want a {kind.__name__}") from None


def model_spec(
    name: str, parameters: dict[str, str], latent_shape: tuple[int, ...], takes_prompts: bool,
    image_shape: tuple[int, ...], what: str,
) -> ModelSpec:
    """The ModelSpec a denoiser's parameters and metadata describe; ValueError names what is missing or bad."""
    _missing(parameters, MODEL_PARAMETERS, what)
    floats = {n: _number(parameters, n, float, what) for n in _MODEL_FLOATS}
    ints = {n: _number(parameters, n, int, what) for n in _MODEL_INTS}
    strings = {n: parameters[n] for n in _MODEL_STRINGS}
    if strings["process"] not in ("ve", "flow"):
        raise ValueError(f"{what}: parameter process is {strings['process']!r}; want ve or flow")
    if strings["schedule"] not in ("karras", "shifted"):
        raise ValueError(f"{what}: parameter schedule is {strings['schedule']!r}; want karras or shifted")
    return ModelSpec(
        name=name, latent_shape=latent_shape, takes_prompts=takes_prompts, image_shape=image_shape,
        **floats, **ints, **strings,
    )


def verifier_spec(name: str, parameters: dict[str, str], what: str) -> VerifierSpec:
    _missing(parameters, VERIFIER_PARAMETERS, what)
    if parameters["needs_condition"] not in ("true", "false"):
        raise ValueError(f"{what}: parameter needs_condition is {parameters['needs_condition']!r}; want true or false")
    if parameters["condition_kind"] not in ("", "class", "prompt"):
        raise ValueError(f"{what}: parameter condition_kind is {parameters['condition_kind']!r}; want class, prompt or empty")
    return VerifierSpec(
        name=name,
        kind=parameters["kind"],
        needs_condition=parameters["needs_condition"] == "true",
        xpred_sigma=_number(parameters, "xpred_sigma", float, what),
        description=parameters["description"],
        condition_kind=parameters["condition_kind"],
    )


def disagreements(declared: dict[str, str], actual: dict[str, str]) -> list[str]:
    """Each parameter whose declared value differs from what the loaded model gives, as `name: "declared" -> "actual"`."""
    return [
        f'{name}: "{declared.get(name, "")}" -> "{value}"'
        for name, value in actual.items()
        if declared.get(name) != value
    ]
