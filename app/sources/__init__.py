"""Where a job's items come from: the request (item_list) or S3 (file_path_lister, delimited_files)."""
