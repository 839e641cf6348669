"""The Gradio demo: a person watches keygen, encryption, FHE on the server and decryption.

The demo is a client like `fhe-client`: it talks to fhe-server over HTTP and never imports the
server's code.
"""
