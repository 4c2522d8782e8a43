"""How the LLM service tells the gateway the tokens a response used, when the gateway asks
(it counts them against a key's budget): never seen by clients, the gateway removes both.

- Request header `X-Usage-Report: tokens` (the gateway drops a client-sent one).
- A JSON response: header `X-Usage-Tokens: <n>`.
- A server-sent event stream: a last SSE comment line `: usage-tokens <n>` (a comment, so
  even a client reached without the gateway would ignore it).
"""

USAGE_REPORT_HEADER = "X-Usage-Report"
USAGE_TOKENS_HEADER = "X-Usage-Tokens"
USAGE_COMMENT = b": usage-tokens "
