"""Synthetic requests for conformance and property tests of policies and cache backends."""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import strategies as st


@dataclass(slots=True, eq=False)
class SyntheticRequest:
    """A request as a policy or cache backend sees it; identity equality, like the engine's."""

    request_id: str
    arrival_time: float = 0.0
    priority: int = 0
    num_prompt_tokens: int = 1
    num_output_tokens: int = 0
    num_computed_tokens: int = 0
    prompt_token_ids: list[int] = field(default_factory=list)
    output_token_ids: list[int] = field(default_factory=list)
    cache_salt: str | None = None

    @property
    def num_tokens(self) -> int:
        return self.num_prompt_tokens + self.num_output_tokens

    @property
    def all_token_ids(self) -> list[int]:
        """The token ids known (a prefix-caching backend hashes them; may be fewer than
        ``num_tokens`` when a test gives none)."""
        return self.prompt_token_ids + self.output_token_ids


@st.composite
def synthetic_requests(draw, min_size: int = 0, max_size: int = 32) -> list[SyntheticRequest]:
    """Lists of requests with unique ids, arbitrary arrivals and priorities, and a consistent
    ``num_computed_tokens <= num_tokens``."""
    n = draw(st.integers(min_size, max_size))
    requests = []
    for i in range(n):
        prompt = draw(st.integers(1, 4096))
        output = draw(st.integers(0, 512))
        requests.append(SyntheticRequest(
            request_id=f"req-{i}",
            arrival_time=draw(st.floats(0, 1e6, allow_nan=False)),
            priority=draw(st.integers(-10, 10)),
            num_prompt_tokens=prompt,
            num_output_tokens=output,
            num_computed_tokens=draw(st.integers(0, prompt + output)),
        ))
    return requests
