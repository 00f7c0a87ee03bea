"""One module per agent family; importing this package registers every :class:`~agent_graph.contracts.AgentSpec`."""

from . import (analyst, chief_editor, critic, embeddings, fact_checker, journalist, newsreader, re_ranker, reasoning,
               synthesizer)

__all__ = ["analyst", "chief_editor", "critic", "embeddings", "fact_checker", "journalist", "newsreader", "re_ranker",
           "reasoning", "synthesizer"]
