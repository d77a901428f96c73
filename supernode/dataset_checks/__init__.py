"""Is a LeRobotDataset fit to join the federation? Every problem named by file, episode, frame
and key, with what was expected.

A site that joins with a broken dataset fails (or, worse, trains on garbage) in every round,
an hour apart, on the coordinator's console. These checks run on the lab's box before its
SuperNode connects (``zk0 check-dataset``, ``zk0 supernode``, ``zk0 supernode --check``) and
in the ClientApp's reach (nothing here imports the deploy side):

- against the **policy** (``metadata``): ``observation.state`` and ``action`` present, 1-D, at
  most SmolVLA's 32 dims, float; at least one camera of shape (H, W, 3);
- against the **federation** (``metadata``, with an ``expectation``: a features JSON the
  coordinator publishes, or the SO-100 defaults): feature names, joint names and their order,
  shapes, dtypes, cameras, fps;
- the **tables** (``tables``): episode and frame indices, timestamps increasing and on the fps
  grid, duplicated timestamps or frames, non-finite values;
- the **media** (``media``): every video file there, its frames present for each episode; a few
  frames of each episode decoded, or every frame with ``deep``;
- the **split** (``metadata``): enough episodes to hold ``eval_episodes`` out and train on the rest.

An error makes the check fail (exit 1); a warning is what training survives, and says what it
will skip: unreadable frames or episodes with a missing file are skipped and counted in each
round (:mod:`supernode.sample_guard`), up to ``max-bad-sample-share`` of the data, past which
they are errors here too.

Modules: ``check`` (:func:`~supernode.dataset_checks.check.check_dataset`: every check, one
:class:`~supernode.dataset_checks.check.DatasetReport`), ``expectation`` (what the federation
expects), ``metadata`` (policy, federation, fps, split: ``meta/info.json``), ``tables``,
``media``, and ``findings`` (:class:`~supernode.dataset_checks.findings.Finding`, which every
check module returns). The imports go one way: ``check`` -> the check modules -> ``findings``.
"""
