"""OpenAI's Responses API: request translation and the store of responses."""
