"""The protocol-neutral core: vhosts, exchanges, queues, consumers. No sockets, no frames, no files."""
