"""Protobuf definitions shared by every part, with their generated Python modules.

Edit the `.proto` files here, then run `scripts/gen-protos.sh` and commit the generated
`*_pb2.py`, `*_pb2.pyi` and `*_pb2_grpc.py` next to them. Nothing else is copied between parts.
"""
