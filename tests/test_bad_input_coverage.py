"""Which tests hold each case of the two bad-input passes (a red team's lists of what went wrong): a
row of a tool's CASES table (by its id) or a test function, as `module::name`.  A renamed or deleted
test that held a case fails here."""

import importlib

# the first pass, by its row numbers (and what else it found)
FIRST_PASS = {
    1: ["test_bad_input::batch_size -1 (it hung, growing memory)"],
    2: [
        "test_bad_input::test_class_names_in_a_list_match_whole_names_or_unique_tails",
        "test_bad_input::test_an_ambiguous_class_name_is_refused_with_its_line",
    ],
    3: [
        "test_bad_input::every training shard missing (it trained on nothing, exit 0)",
        "test_bad_input::test_an_epoch_without_input_fails_the_run_instead_of_reporting_nan",
    ],
    4: [
        "test_bad_input::val tree missing a class folder (labels shifted by one)",
        "test_bad_input::val classes in another order",
    ],
    5: ["test_bad_input::evaluate.py: a 3-class checkpoint on 5-class shards"],
    6: ["test_bad_input::evaluate.py: shards whose classes are in another order"],
    7: ["test_bad_input::shard.py --out inside the --image-folder tree (a rerun read its own shards as images)"],
    8: [
        "test_shard::test_every_entry_is_written_or_quarantined_with_its_reason",
        "test_corpus::test_list_byte_ranges_give_every_line_once_as_the_preflight_reads_it",
    ],
    9: [
        "test_bad_input::two shard.py runs into one --out (the second deleted the first one's rejects)",
        "test_bad_input::test_a_lock_left_by_a_killed_run_is_taken_over_and_released",
    ],
    10: ["test_bad_input::test_glob_characters_in_out_touch_no_neighbour"],
    11: ["test_bad_input::shard.py --out a folder of the user's files (they were overwritten)"],
    12: ["test_bad_input::sample.py with every shard missing (it looped forever)"],
    13: ["test_evaluate::test_a_damaged_shard_is_skipped_and_counted_not_fatal"],
    14: ["test_bad_input::num_classes below the labels (IndexError after 3 attempts)"],
    15: ["test_shard::test_every_entry_is_written_or_quarantined_with_its_reason"],
    16: ["test_shard::test_every_entry_is_written_or_quarantined_with_its_reason"],
    17: [
        "test_bad_input::test_rejection_reasons_carry_no_object_addresses",
        "test_shard::test_rerun_elsewhere_is_byte_identical",
    ],
    18: ["test_bad_input::test_prediction_ids_stay_unique_for_class_folder_corpora"],
    19: [
        "test_bad_input::shard.py: a latin-1 list (a raw UnicodeDecodeError without a line)",
        "test_bad_input::shard.py: a gzipped list",
        "test_bad_input::shard.py: a binary file as list",
        "test_bad_input::shard.py: a latin-1 categories file",
        "test_shard::test_image_folder_tree",
        "test_corpus::test_list_lines_that_are_not_text_are_named",
    ],
    20: [
        "test_bad_input::zero epochs",
        "test_bad_input::unknown model",
        "test_bad_input::a YAML list as config",
        "test_bad_input::data: 5",
        "test_bad_input::a value that is not YAML",
    ],
    21: [
        "test_bad_input::sample.py --num -1",
        "test_bad_input::sample.py --out a folder",
        "test_bad_input::an index.json that is []",
        "test_bad_input::search.py --trials 0",
        "test_bad_input::evaluate.py: a JSON file as checkpoint",
        "test_bad_input::evaluate.py with a shard missing",
    ],
    22: [
        "test_bad_input::a shard url that leaves the folder (absolute)",
        "test_bad_input::a shard url that leaves the folder (..)",
        "test_streams::test_samples_past_a_stale_index_count_are_skipped_and_named",
        "test_evaluate::test_a_damaged_shard_is_skipped_and_counted_not_fatal",
    ],
    "a failure during the work": [
        "test_console::test_a_failure_during_training_ends_with_one_line_naming_it_and_its_traceback",
    ],
    "what else was found": [
        "test_bad_input::an unknown model option (a TypeError in every worker, after every retry)",
        "test_bad_input::a model option of the wrong type",
        "test_bad_input::a branch that is not a stage (ignored in bp mode, fatal in a relay trial)",
        "test_bad_input::an auxiliary head kind that does not exist",
        "test_bad_input::a negative auxiliary loss weight",
        "test_bad_input::model.init_from a missing checkpoint",
        "test_bad_input::model.init_from a checkpoint that does not fit the model",
        "test_bad_input::model.init_from a file that is not a checkpoint",
        "test_bad_input::search.py: a model option a trial may sample does not build",
        "test_bad_input::a photo given as the training config (a raw UnicodeDecodeError)",
        "test_bad_input::search.py: a photo given as the space",
        "test_bad_input::shard.py: a photo given as the recipe",
        "test_bad_input::shard.py: a recipe value of the wrong type (a TypeError mid-run)",
        "test_bad_input::shard.py --max-pixels 0",
        "test_bad_input::shard.py --seed -1",
        "test_bad_input::evaluate.py --actors 0",
        "test_bad_input::evaluate.py --scales 0",
        "test_bad_input::evaluate.py --heldout 1.5",
        "test_bad_input::evaluate.py --max-skipped-fraction 2",
        "test_bad_input::evaluate.py: a crop larger than the image it is cut from (it padded silently)",
        "test_bad_input::an unknown ingest",
        "test_bad_input::device decoding with ray_data ingest",
        "test_bad_input::shard.py: a label-less list whose path sits in a folder naming no class",
        "test_bad_input::shard.py: attributes with a multi-label list",
        "test_bad_input::shard.py: categories numbered from 2",
        "test_bad_input::multi-label shards with ray_data ingest",
        "test_ray_ingest::test_run_py_trains_from_ray_data_and_refuses_a_machine_without_room_for_it",
    ],
    "each sampled trial": [
        "test_bad_input::search.py on a base config with a bad value",
        "test_bad_input::search.py: a value a trial may sample fails training's pre-flight",
    ],
}

# the second pass, by its items
SECOND_PASS = {
    "a comment or header line in the categories, a header in the list": [
        "test_bad_input_corpus::a header line in the categories (class 0 became 'name id')",
        "test_bad_input_corpus::a categories line without its id",
        "test_bad_input_corpus::a list whose first line is path,label (read as unlabeled: every entry lost)",
        "test_bad_input_corpus::a list header over class-name labels",
        "test_bad_input_corpus::test_comment_lines_are_skipped_by_every_reader_alike",
        "test_bad_input_corpus::test_a_label_at_the_end_of_a_line_is_told_from_a_path_with_spaces"],
    "sample.py --out SHARDS/index.json overwrote its input": [
        "test_bad_input_scoring::sample.py --out SHARDS/index.json (it overwrote the index it had read)",
        "test_bad_input_scoring::sample.py --out a new file in the shard folder",
        "test_bad_input_scoring::evaluate.py --out inside the shard folder",
        "test_bad_input_scoring::predict.py --out inside an input folder (a rerun scores the maps)"],
    "diverged training exits 0": [
        "test_bad_input_training::optim.lr .inf (it trained to loss nan, exit 0)",
        "test_bad_input_training::optim.weight_decay .inf", "test_bad_input_training::model.aux_weight .nan",
        "test_bad_input_training::optim.lr 1e999 (YAML's 1e-3 form, overflowing)",
        "test_bad_input_training::test_a_non_finite_loss_on_any_rank_is_seen_by_every_rank_alike",
        "test_bad_input_training::test_a_diverging_run_stops_with_one_line_and_exit_1",
        "test_bad_input_scoring::evaluate.py on a diverged checkpoint (0 1 2 3 4 for every image, exit 0)",
        "test_bad_input_scoring::predict.py on a diverged checkpoint (nan%, exit 0)"],
    "truncated JPEGs closed with EOI, a header claiming 9000x9000": [
        "test_images::test_broken_inputs_are_rejected_with_their_reason",
        "test_images::test_a_header_claiming_more_rows_than_the_data_holds_is_truncated"],
    "data.eval_resize below data.size": [
        "test_bad_input_training::data.eval_resize below data.size (validation on black borders)"],
    "run.name=../../escaped_run": [
        "test_bad_input_training::run.name with ../ (the run was written outside run.storage_path)",
        "test_bad_input_training::run.name .."],
    "hangs: workers above the CPUs, gpu without one, color_pca without its file": [
        "test_bad_input_training::run.workers above this machine's CPUs (it waited forever)",
        "test_bad_input_training::run.gpu on a machine without one (it waited forever)",
        "test_bad_input_training::data.color_pca without color_pca.json (it retried for 120 s, forever with "
        "max_failures -1)"],
    "a FIFO named .jpg": ["test_shard::test_image_folder_tree",
                          "test_bad_input_scoring::test_a_fifo_named_jpg_is_reported_not_waited_on"],
    "every label out of range": [
        "test_bad_input_corpus::test_every_label_out_of_range_is_quarantined_and_the_run_fails"],
    "a categories id like a superscript one": [
        "test_bad_input_corpus::a categories id int() does not take (a traceback)"],
    "tuple settings of the wrong shape": ["test_bad_input_training::data.jitter [a, b] (a TypeError traceback)",
                                          "test_bad_input_training::data.jitter [1, 2, 3] (a ValueError traceback)",
                                          "test_bad_input_training::optim.milestones [a]"],
    "search spaces": ["test_bad_input_training::search: loguniform from 0 (it failed after Ray started)",
                      "test_bad_input_training::search: a NaN range end",
                      "test_bad_input_training::search: asha: 5 (a raw traceback)",
                      "test_bad_input_training::search: an ASHA reduction factor of 1",
                      "test_bad_input_training::search: set: [1, 2] (a raw traceback)",
                      "test_bad_input_training::search: warm_start: 'false' (recorded as True)"],
    "an empty model.pretrained file": [
        "test_bad_input_training::model.pretrained an empty file (an IndexError while formatting the error)"],
    "run.storage_path under /proc or a file": [
        "test_bad_input_training::run.storage_path under /proc (ActorDiedError with no reason)",
        "test_bad_input_training::run.storage_path a file"],
    "a full disk while sharding": ["test_bad_input_corpus::test_a_ray_task_failure_is_named_by_the_users_error"],
    "SIGINT while sharding and training": [
        "test_bad_input_corpus::test_ctrl_c_during_sharding_is_one_line_and_a_rerun_finishes",
        "test_bad_input_training::test_ctrl_c_during_training_says_where_the_checkpoints_are_and_how_to_resume"],
    "a killed Train worker": ["test_fault_tolerance::test_killed_worker_recovers_and_the_stream_matches"],
    "resharding another corpus into the same OUT": ["test_shard::test_image_folder_tree"],
    "video: a faststart MP4 cut short, frames without a memory bound": [
        "test_video_decode::test_a_file_cut_short_whose_index_lists_more_frames_is_marked_truncated",
        "test_video_decode::test_frames_beyond_the_memory_bound_are_refused_before_they_are_held"],
    "12-bit data in 16-bit PNGs, a 2x4000 sliver": [
        "test_images::test_twelve_bit_data_in_a_sixteen_bit_png_is_scaled_from_its_real_depth",
        "test_images::test_a_sliver_whose_resize_would_explode_is_refused_before_decoding"],
    "a class with no training sample": ["test_bad_input_training::test_a_class_without_training_samples_is_named"],
    "a cluster to join that no longer runs": [
        "test_bad_input_training::test_a_cluster_that_no_longer_runs_is_refused_not_waited_for",
        "test_bad_input_scoring::test_a_cluster_that_no_longer_runs_is_refused_not_waited_for",
        "test_bad_input_corpus::test_a_cluster_that_no_longer_runs_is_refused_not_waited_for"],
}


def unheld(rows: dict) -> list[str]:
    """The holders of `rows` that name no test function and no CASES row of their module."""
    missing = []
    for holder in (holder for holders in rows.values() for holder in holders):
        module_name, _, name = holder.partition("::")
        module = importlib.import_module(module_name)
        if not (callable(getattr(module, name, None)) or name in {c[0] for c in getattr(module, "CASES", [])}):
            missing.append(holder)
    return missing


def test_every_case_of_the_first_pass_is_held_by_a_test():
    assert set(FIRST_PASS) >= set(range(1, 23)) and not unheld(FIRST_PASS)


def test_every_case_of_the_second_pass_is_held_by_a_test():
    assert not unheld(SECOND_PASS)
    assert unheld({"renamed": ["test_images::test_that_is_gone", "test_bad_input_training::no such row"]}) == [
        "test_images::test_that_is_gone", "test_bad_input_training::no such row"]
