"""The machinery around helpers.py, one module per concern; imports run one way (helpers <- lth), never back:

    spec       the table of arms, RunSpec                      data      data sources and their identity
    identity   what makes two runs the same run                precision auto precision, Bf16Conv, device names
    store      results folders and every file in them          runs      the resumable run, a run notebook's setup
    report     tables, findings, the README's results          plots     the study's figures
    explore    the explorer's views                            batch     the plan and notebook executions
    cluster    the same plan on Ray (run_all.py --workers)
"""
