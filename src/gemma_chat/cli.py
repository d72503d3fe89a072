"""``gemma-chat``: chat, ask, serve and inspect from a terminal.

Exit codes: 0 success, 1 the model or the request failed, 2 bad settings or usage.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from gemma_chat.application.inference import InferenceService
from gemma_chat.bootstrap import build_service
from gemma_chat.domain.errors import ConfigurationError, GemmaChatError
from gemma_chat.domain.models import ChatSession
from gemma_chat.shared.config import Settings, get_settings

__all__ = ["app", "main"]

app = typer.Typer(
    name="gemma-chat",
    help="Chat with local LLMs (the embedded Gemma 3 270M by default).",
    no_args_is_help=True,
    add_completion=False,
)
err = Console(stderr=True)

HELP = "Commands: /reset (forget the conversation), /system <text>, /save [file], /quit"


def _settings() -> Settings:
    try:
        return get_settings()
    except ConfigurationError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None


def _run(coroutine: object) -> None:
    try:
        asyncio.run(coroutine)  # type: ignore[arg-type]
    except ConfigurationError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(2) from None
    except GemmaChatError as exc:
        err.print(f"[red]{exc}[/red]")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


async def _stream(service: InferenceService, session: ChatSession, text: str, **kw: object) -> None:
    async for chunk in service.stream_response(session, text, **kw):  # type: ignore[arg-type]
        sys.stdout.write(chunk.text)
        sys.stdout.flush()
    sys.stdout.write("\n")


@app.command()
def ask(
    question: Annotated[str, typer.Argument(help="What to ask.")],
    system: Annotated[str | None, typer.Option(help="A system prompt.")] = None,
    temperature: Annotated[float | None, typer.Option(help="0 = greedy.")] = None,
    max_tokens: Annotated[int | None, typer.Option(help="Most tokens to generate.")] = None,
) -> None:
    """Ask one question and stream the answer."""
    settings = _settings()

    async def run() -> None:
        async with build_service(settings) as service:
            session = ChatSession(title="ask", system_prompt=system)
            await _stream(
                service, session, question, temperature=temperature, max_new_tokens=max_tokens
            )

    _run(run())


@app.command()
def chat(
    system: Annotated[str | None, typer.Option(help="A system prompt.")] = None,
    temperature: Annotated[float | None, typer.Option(help="0 = greedy.")] = None,
) -> None:
    """An interactive chat that streams its answers."""
    settings = _settings()

    async def run() -> None:
        async with build_service(settings) as service:
            session = ChatSession(title="chat", system_prompt=system)
            err.print(f"[dim]{service.llm.model_name} ready. {HELP}[/dim]")
            loop = asyncio.get_running_loop()
            while True:
                line = await loop.run_in_executor(None, _read_line)
                if line is None or line.strip() == "/quit":
                    return
                text = line.strip()
                if not text:
                    continue
                if text == "/reset":
                    session.clear()
                    err.print("[dim]Conversation forgotten.[/dim]")
                elif text.startswith("/system"):
                    session.system_prompt = text.removeprefix("/system").strip() or None
                    err.print("[dim]System prompt set.[/dim]")
                elif text.startswith("/save"):
                    path = Path(text.removeprefix("/save").strip() or f"chat-{session.id}.json")
                    saved = json.dumps(session.to_dict(), indent=1, ensure_ascii=False)
                    await asyncio.to_thread(path.write_text, saved)
                    err.print(f"[dim]Saved to {path}.[/dim]")
                elif text.startswith("/"):
                    err.print(f"[yellow]Unknown command. {HELP}[/yellow]")
                else:
                    try:
                        await _stream(service, session, text, temperature=temperature)
                    except GemmaChatError as exc:  # a bad turn does not end the chat
                        err.print(f"[red]{exc}[/red]")

    _run(run())


def _read_line() -> str | None:
    try:
        return input("> " if sys.stdin.isatty() else "")
    except EOFError:
        return None


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Default: GEMMA_SERVER__HOST.")] = None,
    port: Annotated[int | None, typer.Option(help="Default: GEMMA_SERVER__PORT.")] = None,
) -> None:
    """Serve the OpenAI-compatible API and the chat page (http://HOST:PORT/)."""
    from gemma_chat.server.main import serve as run_server

    run_server(_settings(), host=host, port=port)


@app.command()
def info() -> None:
    """Load the model and print what it is, where it runs and the memory it takes."""
    settings = _settings()

    async def run() -> None:
        async with build_service(settings) as service:
            model_info = await service.get_model_info()
        print(json.dumps(model_info, indent=1, default=str))

    _run(run())


def main() -> None:
    app()


if __name__ == "__main__":
    main()
