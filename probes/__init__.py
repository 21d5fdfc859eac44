"""What the stack says, asked the way a user or an operator would.

``probes.chat``: the chat's HTTP API and WebSocket protocol, every wait bounded
by a deadline. ``probes.connections``: what PostgreSQL and PgBouncer say about
connections, and the bound the configs promise. Shared by the tests, the native
stack's end-to-end check and the load test, which all import from here; this
package imports none of them.
"""
