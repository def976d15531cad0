"""A BYOC container's serve entrypoint, outside Docker: start MMS through sagemaker-inference.

Run by the baseline virtualenv's Python with SAGEMAKER_MULTI_MODEL=true and SAGEMAKER_BIND_TO_PORT
set; argv[1] is the work folder that takes the config file MMS would otherwise write under /etc.
start_model_server blocks until MMS exits.
"""

import os
import sys

from sagemaker_inference import model_server

HANDLER_SERVICE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "handler_service.py")


def main(work_dir: str) -> None:
    model_server.MMS_CONFIG_FILE = os.path.join(work_dir, "config.properties")
    model_server.start_model_server(handler_service=HANDLER_SERVICE)


if __name__ == "__main__":
    main(sys.argv[1])
