"""Python steps for examples/hello.yaml (`call: hello_steps:...`)."""

import anyio


async def sum_of_squares(n: int) -> int:
    await anyio.sleep(0.1)
    return sum(i * i for i in range(n))


def report(title: str) -> str:
    print(title)
    return title
