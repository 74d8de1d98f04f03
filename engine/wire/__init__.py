"""HTTP/1.1 syntax shared by the client codec (engine/http) and the upstream client
(engine/upstream): field tables, framing rules, status lines and the head Writer
(_common.pxd). A leaf: it imports nothing of engine."""
