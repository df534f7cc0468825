"""GPU requests: a job's need for GPUs at each site, written as NVFlare's ``resource_spec``.

NVFlare splits the question in two. The job says what it needs at each site (``resource_spec``
in its meta file); each site's resource manager (``GPUResourceManager`` in the site's
``local/resources.json``) says what the site has. Before the server's job scheduler deploys a job
it asks every site to check the job's need against what is free, and holds the job until enough
sites can reserve it; a site that reserves GPUs for the job sets ``CUDA_VISIBLE_DEVICES`` to them
for the job's process (``GPUResourceConsumer``). The simulator validates the spec's format but
schedules nothing (docs/templates.md, "GPUs").

FLIP states a request the same way: the app's ``config.json`` may carry a top-level
``RESOURCE_SPEC`` in NVFlare's names (``{"num_of_gpus": 1, "mem_per_gpu_in_GiB": 8}``), FLIP's
hub writes it into ``meta.json`` as one flat entry per trust, and its sanity caps are
:data:`MAX_GPUS_PER_SITE` and :data:`MAX_MEM_PER_GPU_GIB`. This module writes the same entries.

Nothing here imports NVFlare.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from flip_nvflare.errors import FlipConfigError

#: The top-level key of a FLIP app's ``config.json`` holding its GPU request (FLIP's fl-api reads it).
APP_CONFIG_KEY = "RESOURCE_SPEC"
#: NVFlare's keys of one site's request (``GPUResourceManager``'s ``num_gpu_key`` and ``gpu_mem_key``).
NUM_GPUS_KEY = "num_of_gpus"
GPU_MEM_KEY = "mem_per_gpu_in_GiB"
#: NVFlare's wildcard site of a ``resource_spec``: applies to every site without its own entry.
#: It accepts ``num_of_gpus`` but refuses ``mem_per_gpu_in_GiB``.
DEFAULT_SITE = "@default"
#: FLIP's sanity caps on one site's request (its fl-api refuses more).
MAX_GPUS_PER_SITE = 8
MAX_MEM_PER_GPU_GIB = 192


@dataclass(frozen=True)
class GpuRequest:
    """GPUs a job needs at each site.

    Attributes:
        gpus: GPUs per site (>= 1).
        gpu_mem: GiB of free memory each of them must have; None: any.
    """

    gpus: int
    gpu_mem: float | None = None

    def describe(self) -> str:
        """``2 GPU(s) with >= 16 GiB each`` (for notes and logs)."""
        memory = f" with >= {self.gpu_mem:g} GiB each" if self.gpu_mem is not None else ""
        return f"{self.gpus} GPU(s){memory}"


def check_gpu_request(gpus: Any, gpu_mem: Any = None) -> GpuRequest:
    """Check a GPU request and return it.

    Args:
        gpus: GPUs per site: an integer from 1 to :data:`MAX_GPUS_PER_SITE` (not a bool or a float).
        gpu_mem: GiB per GPU: a number above 0, at most :data:`MAX_MEM_PER_GPU_GIB`; None for any.

    Returns:
        The request.

    Raises:
        FlipConfigError: A value is of the wrong type or out of range (every problem is named).
    """
    problems = []
    if isinstance(gpus, bool) or not isinstance(gpus, int) or not 1 <= gpus <= MAX_GPUS_PER_SITE:
        problems.append(f"the number of GPUs must be an integer from 1 to {MAX_GPUS_PER_SITE}, got {gpus!r}")
    if gpu_mem is not None and (
        isinstance(gpu_mem, bool)
        or not isinstance(gpu_mem, (int, float))
        or not math.isfinite(gpu_mem)
        or not 0 < gpu_mem <= MAX_MEM_PER_GPU_GIB
    ):
        problems.append(
            f"the memory per GPU must be a number of GiB above 0 and at most {MAX_MEM_PER_GPU_GIB}, got {gpu_mem!r}"
        )
    if problems:
        raise FlipConfigError("Invalid GPU request: " + "; ".join(problems) + ".")
    return GpuRequest(gpus, gpu_mem)


def gpu_resource_spec(
    sites: Sequence[str] | None, gpus: int, gpu_mem: float | None = None
) -> dict[str, dict[str, Any]]:
    """NVFlare's ``resource_spec`` asking for ``gpus`` GPUs (of ``gpu_mem`` GiB or more) at every site.

    With site names: one flat entry per site, ``{"site-1": {"num_of_gpus": 2, "mem_per_gpu_in_GiB": 16}}``
    (as FLIP's hub writes it; the memory key only when ``gpu_mem`` is given). Without: NVFlare's
    wildcard ``{"@default": {"num_of_gpus": 2}}``, which covers whichever sites take part but cannot
    carry a memory (NVFlare refuses ``mem_per_gpu_in_GiB`` there), so ``gpu_mem`` then needs the sites.

    Args:
        sites: The participating sites by NVFlare client name; None or empty for every site.
        gpus: GPUs per site (see :func:`check_gpu_request`).
        gpu_mem: GiB of memory per GPU, or None for any.

    Returns:
        The ``resource_spec`` for the job's meta file (a new dict).

    Raises:
        FlipConfigError: Invalid numbers, invalid or repeated site names, or ``gpu_mem`` without sites.
    """
    request = check_gpu_request(gpus, gpu_mem)
    names = list(sites or [])
    bad = [s for s in names if not isinstance(s, str) or not s.strip() or s.startswith("@")]
    if bad:
        raise FlipConfigError(f"Site names must be non-empty NVFlare client names, got {bad!r}.")
    repeated = sorted({s for s in names if names.count(s) > 1})
    if repeated:
        raise FlipConfigError(f"Site names are repeated: {', '.join(repeated)}.")
    if not names:
        if request.gpu_mem is not None:
            raise FlipConfigError(
                "A memory per GPU needs the sites named: NVFlare's wildcard resource_spec entry (@default) "
                "cannot carry mem_per_gpu_in_GiB. Name the sites (job create: --dev-data) or drop the memory."
            )
        return {DEFAULT_SITE: {NUM_GPUS_KEY: request.gpus}}
    return {site: site_entry(request) for site in names}


def site_entry(request: GpuRequest) -> dict[str, Any]:
    """One site's ``resource_spec`` entry for ``request``."""
    entry: dict[str, Any] = {NUM_GPUS_KEY: request.gpus}
    if request.gpu_mem is not None:
        entry[GPU_MEM_KEY] = request.gpu_mem
    return entry


def app_gpu_request(app_config: Mapping[str, Any]) -> GpuRequest | None:
    """The GPU request of a FLIP app's ``config.json`` (its ``RESOURCE_SPEC``), as FLIP's fl-api reads it.

    ``RESOURCE_SPEC`` is an object with ``num_of_gpus`` (an integer from 0 to 8) and optionally
    ``mem_per_gpu_in_GiB`` (an integer from 0 to 192; 0: any); no other key.

    Args:
        app_config: The app's ``config.json``.

    Returns:
        The request; None when there is no ``RESOURCE_SPEC`` or it asks for no GPU.

    Raises:
        FlipConfigError: ``RESOURCE_SPEC`` is there but FLIP would refuse it.
    """
    raw = app_config.get(APP_CONFIG_KEY)
    if raw is None:
        return None
    example = f'{{"{NUM_GPUS_KEY}": 1, "{GPU_MEM_KEY}": 8}}'
    if not isinstance(raw, dict):
        raise FlipConfigError(f"config.json {APP_CONFIG_KEY} must be an object such as {example}.")
    unknown = sorted(set(raw) - {NUM_GPUS_KEY, GPU_MEM_KEY})
    if unknown:
        raise FlipConfigError(
            f"config.json {APP_CONFIG_KEY} has unknown key(s) {unknown}; allowed: {NUM_GPUS_KEY}, {GPU_MEM_KEY}."
        )
    if NUM_GPUS_KEY not in raw:
        raise FlipConfigError(f"config.json {APP_CONFIG_KEY} must set {NUM_GPUS_KEY}, e.g. {example}.")
    gpus, memory = raw[NUM_GPUS_KEY], raw.get(GPU_MEM_KEY, 0)
    for key, value, cap in ((NUM_GPUS_KEY, gpus, MAX_GPUS_PER_SITE), (GPU_MEM_KEY, memory, MAX_MEM_PER_GPU_GIB)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= cap:
            raise FlipConfigError(
                f"config.json {APP_CONFIG_KEY} {key} must be an integer from 0 to {cap}, got {value!r}."
            )
    if gpus == 0:
        return None
    return GpuRequest(gpus, memory or None)
