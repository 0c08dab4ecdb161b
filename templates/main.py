"""Flex Template entry point (FLEX_TEMPLATE_PYTHON_PY_FILE): thin on purpose.

The pipeline lives in the installed ``pipelines`` package so that the launcher, the workers and
``mds run`` all execute the same code; this file only hands the template parameters over.
"""
from __future__ import annotations

import logging

from pipelines import streaming_pipeline

if __name__ == "__main__":
    logging.getLogger().setLevel(logging.INFO)
    streaming_pipeline.run()
