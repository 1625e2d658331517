"""The applications of T/ZSA 37-2020, each with its terminal and server side."""
