"""The platform package: the base layer (``cluster.core``) and the entry points (``cluster.cli``,
``cluster.datagen``, ``cluster.provision``); see docs/architecture.md."""

import os as _os

# gRPC's default (c-ares) resolver asks the machine's DNS server even for names that
# /etc/hosts answers, such as the local cluster's pm-master; the system resolver does not.
_os.environ.setdefault("GRPC_DNS_RESOLVER", "native")
