"""deeproots: run open-weight LLMs from real model files at the speed of the metal."""
