"""Layout planning (LayoutLLM): in-context examples, LLM prompts and answers, planners, policy, layout metrics."""
