"""The mule's script: uwsgi.ini has `mule = app/inference/mule_main.py`.

uWSGI 2.0.31 runs a mule given as a .py file; the `module:function` form segfaults there, so
this file is the whole entry point.
"""

from app.inference.mule_server import run

run()
