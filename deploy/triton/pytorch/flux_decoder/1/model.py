# noisesearch's own network code (noisesearch_server/triton/pb_torch.py); config.pbtxt says which network.
from noisesearch_server.triton.pb_torch import TorchDecoder as TritonPythonModel  # noqa: F401
