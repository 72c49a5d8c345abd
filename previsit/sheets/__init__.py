"""Planning sheets: the per-visit sheet and the clinic-day huddle.

- `tasks`: who does what for a visit (`tasks.tasks(plan)`: roles, draw-by dates, the
  patient's other visit);
- `visit`: the per-visit sheet's view-model (`visit_sheet`);
- `huddle`: the huddle's view-model (`huddle`, `time_saved`);
- `selection`: which visits a sheet covers (location, practitioner, time order);
- `filenames`: the sheets' file names, from appointment ids;
- `render`: HTML from the shipped templates.

The web app imports the view-models and `render`; nothing here writes files or prints PDF
(`previsit.pdf` does that, for the CLI).
"""

from previsit.sheets.filenames import huddle_sheet_filename, visit_sheet_filename
from previsit.sheets.huddle import Huddle, HuddleDay, TimeSaved, huddle, time_saved
from previsit.sheets.render import (
    Paper,
    environment,
    render_huddle,
    render_visit_sheet,
    render_visit_sheets,
    templates_dir,
)
from previsit.sheets.selection import Group, locations, practitioners, select_plans
from previsit.sheets.tasks import Task, role_counts
from previsit.sheets.visit import Item, VisitSheet, visit_sheet

__all__ = [
    "Group", "Huddle", "HuddleDay", "Item", "Paper", "Task", "TimeSaved", "VisitSheet",
    "environment", "huddle", "huddle_sheet_filename", "locations", "practitioners",
    "render_huddle", "render_visit_sheet", "render_visit_sheets", "role_counts",
    "select_plans", "templates_dir", "time_saved", "visit_sheet",
    "visit_sheet_filename",
]
