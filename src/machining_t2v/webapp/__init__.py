"""The local web page (``machining-t2v serve``): a work instruction in, a process video out."""
