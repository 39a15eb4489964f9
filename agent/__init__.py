"""goldilocks-agent: the per-hypervisor process that keeps WireGuard peers and VXLAN tunnel ports as the controller says."""
