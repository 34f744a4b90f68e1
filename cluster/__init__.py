"""The platform's base: settings, errors, storage back-ends, the CLI."""

import os as _os

# gRPC's default (c-ares) resolver asks the machine's DNS server even for names that
# /etc/hosts answers, such as the local cluster's pm-master; the system resolver does not.
_os.environ.setdefault("GRPC_DNS_RESOLVER", "native")
