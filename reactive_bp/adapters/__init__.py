"""Adapters between reactive_bp and the outside world (asyncio, threads, reactivex)."""
