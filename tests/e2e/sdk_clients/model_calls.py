"""Run by the model-SDK virtualenv (openai and anthropic pin an HTTP stack that mitmproxy's
cannot share): one call per SDK through HTTPS_PROXY, printing what each returned."""

import json

import anthropic
import openai

openai_reply = openai.OpenAI(
    api_key="sk-proj-PlantedOpenAIKey000000000000"
).chat.completions.create(
    model="gpt-test",
    messages=[{"role": "user", "content": "Summarise the refunds"}],
    max_completion_tokens=300,
)
claude_reply = anthropic.Anthropic(api_key="sk-ant-api03-PlantedAnthropicKey0000").messages.create(
    model="claude-test",
    max_tokens=512,
    messages=[{"role": "user", "content": "Draft the incident summary"}],
    tools=[{"name": "lookup", "description": "d", "input_schema": {"type": "object"}}],
)
print(
    json.dumps(
        {
            "openai": openai_reply.choices[0].message.content,
            "anthropic": claude_reply.content[0].text,
        }
    )
)
