"""noisesearch model server: diffusion denoisers and verifiers behind the noisesearch.v1 gRPC contract."""
