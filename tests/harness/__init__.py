"""Test harness: real Redis/etcd/Tansu servers, a mock model backend and router subprocesses.

Import from the modules (`tests.harness.services`, `.backend`, `.router_proc`, `.kafka`); this
package stays empty so `python -m tests.harness.backend` and tools/services.py import only what they use.
"""
