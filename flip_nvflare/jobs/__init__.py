"""Build NVFlare jobs from the FLIP templates: ``check_app`` and ``create_job`` (``flip-nvflare job create``)."""
