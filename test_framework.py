#!/usr/bin/env python3
"""Check a gemma-chat installation: ``python test_framework.py [--real]``.

Without options it checks the imports, the settings and one chat turn on a fake model (a few
seconds). With ``--real`` it also loads the embedded Gemma 3 270M and runs one real turn, streamed.
Prints what it checks; exits non-zero with the reason on the first failure.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import traceback
from collections.abc import Awaitable, Callable


def check_imports() -> str:
    import gemma_chat

    missing = [
        name for name in gemma_chat.__all__ if name != "GemmaLLM" and not hasattr(gemma_chat, name)
    ]
    if missing:
        raise RuntimeError(f"gemma_chat does not export {missing}")
    return f"gemma_chat {gemma_chat.__version__}"


def check_settings() -> str:
    from gemma_chat import get_settings

    settings = get_settings()
    return (
        f"model={settings.model.name} device={settings.performance.device} "
        f"cache={'on' if settings.cache.enabled else 'off'} environment={settings.environment}"
    )


async def check_fake_round_trip() -> str:
    from gemma_chat import ChatSession, InferenceService
    from gemma_chat.testing import create_mock_llm

    session = ChatSession(title="check")
    async with InferenceService(llm=create_mock_llm("pong")) as service:
        response = await service.generate_response(session=session, user_message="ping")
        streamed = [c.text async for c in service.stream_response(session, "ping again")]
    if response.content != "pong" or "".join(streamed) != "pong" or len(session.messages) != 4:
        raise RuntimeError(f"unexpected round trip: {response!r}, {streamed!r}")
    return "fake LLM: generate and stream round trip"


async def check_real_turn() -> str:
    from gemma_chat import ChatSession, InferenceService, get_settings

    started = time.perf_counter()
    session = ChatSession(title="check", system_prompt="You are a helpful assistant.")
    async with InferenceService(get_settings(cache={"enabled": False})) as service:
        loaded = time.perf_counter() - started
        parts = [
            chunk.text
            async for chunk in service.stream_response(
                session, "What is the capital of France?", temperature=0, max_new_tokens=32
            )
        ]
        health = await service.health_check()
    answer = "".join(parts).strip()
    if not answer:
        raise RuntimeError("the embedded model answered nothing")
    if health["status"] != "healthy":
        raise RuntimeError(f"health check says {health['status']}")
    return f"embedded model loaded in {loaded:.1f} s and answered: {answer!r}"


def run(name: str, check: Callable[[], str] | Callable[[], Awaitable[str]]) -> None:
    print(f"- {name} ... ", end="", flush=True)
    try:
        result = check()
        if asyncio.iscoroutine(result):
            result = asyncio.run(result)
    except Exception as exc:
        print("FAILED")
        expected = type(exc).__module__.startswith("gemma_chat")
        if not expected:  # a bug or a broken installation: show where
            traceback.print_exc()
        print(f"\nInstallation check failed at '{name}': {type(exc).__name__}: {exc}")
        if isinstance(exc, ImportError):
            print("Install the project with `pip install -r requirements.txt -e .`, then retry.")
        sys.exit(1)
    print(f"ok ({result})")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", action="store_true", help="also run a turn on the embedded model")
    args = parser.parse_args(argv)
    run("imports", check_imports)
    run("settings", check_settings)
    run("round trip on a fake LLM", check_fake_round_trip)
    if args.real:
        run("one real turn on the embedded model", check_real_turn)
    print("gemma-chat is installed correctly.")


if __name__ == "__main__":
    main()
