"""Triton loads TritonPythonModel from here; the code lives in the noisesearch server."""
from noisesearch_server.triton.pb_gmm import GmmDenoiser as TritonPythonModel  # noqa: F401
