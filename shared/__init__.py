"""Code shared by the gateway, the runners and the registry: settings, wire protocol, errors."""
