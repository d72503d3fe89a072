"""The README's quickstart: one chat turn, one streamed turn, and the service's figures.

Run it with ``python examples/quickstart.py`` (the first run converts the embedded model).
"""

import asyncio

from gemma_chat import ChatSession, InferenceService


async def main() -> None:
    session = ChatSession(title="My Chat")
    session.system_prompt = "You are helpful."
    async with InferenceService() as service:
        response = await service.generate_response(
            session=session, user_message="Hello!", temperature=0.7
        )
        print(response.content, response.token_usage)
        async for chunk in service.stream_response(session=session, user_message="And then?"):
            print(chunk.text, end="", flush=True)
        print()
        print(await service.get_statistics())
        print(await service.get_model_info())
        print(await service.health_check())


if __name__ == "__main__":
    asyncio.run(main())
