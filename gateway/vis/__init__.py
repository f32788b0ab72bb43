"""Visualization jobs: VNC desktops started as ordinary jobs, opened in the browser by noVNC.

``launcher.sh`` is the job script (Xvnc + websockify + the command, session file 0600);
``launcher.py`` builds the JobSpec; ``session.py`` reads the session file and builds the
noVNC address; ``service.py`` is the default behaviour of the vis hooks; ``options.py`` the
``vis`` configuration section. The API is gateway/api/vis; NGINX's part is
deploy/nginx/hpc-gateway-novnc.conf; docs/vis.md explains the whole.
"""
from .launcher import is_vis_job, launcher_script, vis_job_spec
from .options import load_vis_options
from .service import read_vis_session, submit_hook
from .session import parse_session, session_path, vis_url

__all__ = ["is_vis_job", "launcher_script", "vis_job_spec", "load_vis_options", "read_vis_session",
           "submit_hook", "parse_session", "session_path", "vis_url"]
