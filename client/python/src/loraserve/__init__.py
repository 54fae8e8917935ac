"""Python client for loraserve (multi-tenant LoRA serving over gRPC). See loraserve.client."""
from loraserve.client import (AdapterInfo, Client, Error, GeneratedToken, GenerateResult, ScoreResult,
                              TokenLogprob, TransferredFile)

__all__ = ["AdapterInfo", "Client", "Error", "GeneratedToken", "GenerateResult", "ScoreResult", "TokenLogprob",
           "TransferredFile"]
