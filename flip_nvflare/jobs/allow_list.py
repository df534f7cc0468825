"""The component allow list a trust adds for FLIP jobs (NVFlare's ``class_allow_list``).

NVFlare 2.9 checks, at every site, the class of each component of a job that brings no code of
its own (no ``custom/`` folder) against the site's ``class_allow_list`` in
``local/resources.json``, refusing the others (``UnsafeComponentError``). Its default list holds
only NVFlare classes, and not all of those FLIP jobs use. A trust that runs FLIP jobs adds:

- ``flip_nvflare.``: every flip-nvflare class (its installed, reviewed version; jobs carry no copy);
- the NVFlare classes FLIP's job templates use that the default list lacks
  (:data:`NVFLARE_CLASSES_FLIP_USES`).

``flip-nvflare site-policy render --allow-list`` prints the list (NVFlare's defaults plus these)
as the JSON fragment to merge into ``local/resources.json``. Jobs with app code in ``custom/``
(every FLIP app's ``models.py`` and scripts) are not checked by NVFlare at all.
"""

from __future__ import annotations

#: The prefix that admits every flip-nvflare class.
FLIP_PREFIX = "flip_nvflare."

#: NVFlare classes FLIP's templates use that NVFlare's default allow list does not hold.
NVFLARE_CLASSES_FLIP_USES: tuple[str, ...] = (
    "nvflare.app_common.executors.client_api_executor.ClientAPIExecutor",
    "nvflare.app_opt.pt.file_model_persistor.PTFileModelPersistor",
)


def default_allow_list() -> list[str]:
    """NVFlare's default ``class_allow_list``."""
    from nvflare.app_common.default_component_policy import DEFAULT_CLASS_ALLOW_LIST

    return list(DEFAULT_CLASS_ALLOW_LIST)


def flip_additions() -> list[str]:
    """What a trust adds to NVFlare's default list for FLIP jobs (those not already there)."""
    default = set(default_allow_list())
    return [entry for entry in (FLIP_PREFIX, *NVFLARE_CLASSES_FLIP_USES) if entry not in default]


def site_allow_list() -> list[str]:
    """NVFlare's default ``class_allow_list`` followed by :func:`flip_additions`."""
    return default_allow_list() + flip_additions()


def allow_list_fragment() -> dict[str, list[str]]:
    """The ``local/resources.json`` fragment for a site that runs FLIP jobs."""
    return {"class_allow_list": site_allow_list()}
