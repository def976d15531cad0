"""The handler service MMS instantiates per model worker: sagemaker-inference's Transformer over our handler.

MMS imports this module by file name and instantiates its only class, so it defines exactly one.
"""

from inference_handler import XGBoostInferenceHandler
from sagemaker_inference.default_handler_service import DefaultHandlerService
from sagemaker_inference.transformer import Transformer


class HandlerService(DefaultHandlerService):
    def __init__(self):
        super().__init__(transformer=Transformer(default_inference_handler=XGBoostInferenceHandler()))
